# The two commands: `make run` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# A stamp, not node_modules/.bin/anvil: that is a symlink, and make would compare its target's age.
ANVIL := node_modules/.installed-stamp

# The suite runs on real services (README, "Tests"); these are this machine's defaults.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/vault_orchestrator
# The Django checks in `lint` read migration history from a database that always exists.
LINT_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
TEST_RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672//
PYTEST_ARGS ?=

.PHONY: install chromium promtool rules run test test-fast lint check-migrations bench clean

$(STAMP): pyproject.toml constraints.txt
	@echo "==> Creating the virtualenv in $(VENV) and installing pinned dependencies"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	@$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[dev]' 2>&1 | grep -v "is ignored: it is neither" ; test $${PIPESTATUS[0]} -eq 0
	@touch $@

# `npm install` with the committed lock, not `npm ci`: npm 11 leaves the other platforms'
# optional anvil binaries out of the lock and then `npm ci` refuses it as out of sync.
$(ANVIL): package.json package-lock.json
	@echo "==> Installing anvil from npm into node_modules/"
	@npm install --no-audit --no-fund --loglevel=error
	@node_modules/.bin/anvil --version | head -n 1
	@touch $@

# The browser tests (tests/e2e/test_approval_browser.py) drive Debian's chromium through Playwright;
# `playwright install` would download a browser build of its own, which this machine cannot fetch.
# Only `make test` needs it, not `make run`.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The alerting rules (deploy/prometheus/) are checked and unit-tested with promtool, from Debian's
# prometheus package. We want the tool, not a server on :9090: without recommends (no node
# exporter), and on a host where systemd started the service, it is stopped and disabled again
# (a container's policy-rc.d never starts it).
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq \
		&& apt-get install -y -qq --no-install-recommends prometheus \
		&& (systemctl disable --now prometheus >/dev/null 2>&1 || true))

rules: promtool
	@echo "==> Prometheus alerting rules: promtool check rules, promtool test rules"
	@promtool check rules deploy/prometheus/alerts.yml
	@promtool test rules deploy/prometheus/alerts_test.yml

install: $(STAMP) $(ANVIL)

run: install
	@$(PY) manage.py up

lint: install
	@echo "==> ruff, mypy, import-linter, Django checks"
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check --quiet .
	@$(VENV)/bin/mypy .
	@$(VENV)/bin/lint-imports --no-cache | grep -E "KEPT|BROKEN|^Contracts|is not allowed|->" ; test $${PIPESTATUS[0]} -eq 0
	@DATABASE_URL=$(LINT_DATABASE_URL) DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py check --fail-level WARNING
	@DATABASE_URL=$(LINT_DATABASE_URL) DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py makemigrations --check --dry-run >/dev/null \
		|| (echo "Model changes without migrations: run manage.py makemigrations" && exit 1)

# Two tiers (tests/conftest.py): `stack` marks the tests that start workers, beat, anvil, an
# executor or web server, or a browser; the others need PostgreSQL and Redis only.
TEST_ENV = DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL)

test-fast: install rules
	@echo "==> Fast tier: PostgreSQL and Redis only; no worker, beat, anvil, server or browser"
	$(TEST_ENV) $(PY) -m pytest -m "not stack" $(PYTEST_ARGS)

test: lint chromium rules
	@echo "==> Fast tier: PostgreSQL and Redis only; no worker, beat, anvil, server or browser"
	$(TEST_ENV) $(PY) -m pytest -m "not stack" $(PYTEST_ARGS)
	@echo "==> Stack tier: real Celery workers, beat, anvil, executor and web servers, the browser"
	$(TEST_ENV) $(PY) -m pytest -m stack $(PYTEST_ARGS)
	@echo "==> Engine tests again with RabbitMQ as the broker"
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_RABBITMQ_URL) \
		$(PY) -m pytest -m engine $(PYTEST_ARGS)

BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/vault_orchestrator_bench
BENCH_BROKER_URL ?= redis://127.0.0.1:6379/9

bench: install
	@createdb -h 127.0.0.1 -U postgres vault_orchestrator_bench 2>/dev/null || true
	DATABASE_URL=$(BENCH_DATABASE_URL) CELERY_BROKER_URL=$(BENCH_BROKER_URL) $(PY) manage.py migrate -v0
	DATABASE_URL=$(BENCH_DATABASE_URL) CELERY_BROKER_URL=$(BENCH_BROKER_URL) $(PY) manage.py bench engine
	DATABASE_URL=$(BENCH_DATABASE_URL) CELERY_BROKER_URL=$(BENCH_BROKER_URL) $(PY) manage.py bench relayer
	DATABASE_URL=$(BENCH_DATABASE_URL) CELERY_BROKER_URL=$(BENCH_BROKER_URL) $(PY) manage.py bench flow-a
	DATABASE_URL=$(BENCH_DATABASE_URL) CELERY_BROKER_URL=$(BENCH_BROKER_URL) $(PY) manage.py bench triggers

clean:
	rm -rf $(VENV) node_modules var test-artifacts
