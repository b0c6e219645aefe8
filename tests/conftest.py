"""Fixtures that start the real parts: Celery workers on the real broker, and anvil.

The suite runs against PostgreSQL and Redis (or RabbitMQ) named by DATABASE_URL and
CELERY_BROKER_URL; `make test` sets both. Workers are separate processes pointed at the test
database that pytest-django created, so tests that use them need committed data
(`@pytest.mark.django_db(transaction=True)`).

Two tiers. A test is in the `stack` tier when it requests a fixture of STACK_FIXTURES (they start
processes or servers: workers, beat, anvil, an executor server, a web server, a live server for
the browser) or carries one of STACK_MARKERS; `pytest_collection_modifyitems` marks it so. Every
other test is in the fast tier (`pytest -m "not stack"`, `make test-fast`): it may use the database
and Redis, nothing else, and `_fast_tier_starts_no_process` makes it fail if it starts a
ManagedProcess or an executor server all the same. A test that starts one by hand, without a
fixture, says `@pytest.mark.stack` itself."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from orchestrator.devtools import processes
from orchestrator.infra.audit_guard import PRUNE_SQL
from orchestrator.infra.broker import queues_purge, queues_reset
from tests.support import control

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"

# The fixtures that start something (transitively requested ones count: `fixturenames` is the
# closure). `server` is the executor server here and the live server in tests/e2e; `web` is the
# gunicorn of tests/e2e/test_web_server.py; `beat` is tests/automations/test_triggers.py's.
STACK_FIXTURES = frozenset(
    {"worker", "workers", "worker_env", "beat", "anvil", "anvils", "server", "live_server", "web"}
)
# The markers of the suites that run on the whole stack (pyproject's [tool.pytest.ini_options]).
STACK_MARKERS = ("engine", "relayer", "flow", "automations", "smoke")


def in_stack_tier(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & STACK_FIXTURES) or any(item.get_closest_marker(name) for name in (*STACK_MARKERS, "stack"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if in_stack_tier(item) and item.get_closest_marker("stack") is None:
            item.add_marker(pytest.mark.stack)


class StackInFastTier(AssertionError):
    """A test of the fast tier started a process or a server."""


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a test not marked `stack`, starting a ManagedProcess (worker, beat, anvil, redis, web...)
    or an executor server fails the test, so the fast tier cannot grow a process start unseen."""
    if request.node.get_closest_marker("stack") is not None:
        yield
        return
    from tests.support.executor_server import ExecutorServer

    def refuse(what: str) -> Callable[..., Any]:
        def start(self: Any, *args: Any, **kwargs: Any) -> Any:
            name = f" ({self.name})" if isinstance(getattr(self, "name", None), str) else ""
            raise StackInFastTier(
                f"{request.node.nodeid} starts {what}{name} but is in the fast tier: request one of "
                f"{sorted(STACK_FIXTURES)} or mark it @pytest.mark.stack (see tests/conftest.py)"
            )

        return start

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processes.ManagedProcess, "start", refuse("the process"))
        patch.setattr(ExecutorServer, "start", refuse("an executor server"))
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def _database_url() -> str:
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class Workers:
    """Starts, kills and restarts real Celery worker processes for one test."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[processes.ManagedProcess] = []

    def start(self, *, concurrency: int = 2, extra_env: dict[str, str] | None = None) -> processes.ManagedProcess:
        log = ARTIFACTS / "logs" / f"worker-{uuid.uuid4().hex[:8]}.log"
        worker = processes.celery_worker(log_path=log, env={**self.env, **(extra_env or {})}, concurrency=concurrency)
        worker.start().wait_ready(timeout=60)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture(scope="session", autouse=True)
def _fast_test_database() -> Iterator[None]:
    """Two costs of the test process that prove nothing, cut for the whole session:

    - Passwords hash with MD5 first (the real hashers stay listed, so their hashes still check):
      Django's PBKDF2 takes most of a second per user, and fixtures make several.
    - A transactional test's teardown empties the tables with DELETE instead of TRUNCATE. On
      PostgreSQL a TRUNCATE of every table makes new files for each table and index and takes about
      a second here; DELETE of the few rows a test wrote takes milliseconds. Its foreign keys
      are deferred, so the end state is the same. A flush that also resets sequences or
      cascades keeps Django's TRUNCATE.
    - Either way the flush first sets the audit trail's prune setting for its transaction
      (orchestrator/infra/audit_guard.py): the append-only triggers refuse DELETE and TRUNCATE
      of audit rows otherwise.

    Only this process: workers, beat and web servers run the real settings and backend."""
    from django.db.backends.postgresql.operations import DatabaseOperations
    from django.test.utils import override_settings

    truncate = DatabaseOperations.sql_flush

    def sql_flush(
        self: DatabaseOperations, style: Any, tables: Any, *, reset_sequences: bool = False, allow_cascade: bool = False
    ) -> list[str]:
        if not tables:
            return []
        if reset_sequences or allow_cascade:
            return [
                f"{PRUNE_SQL};",
                *truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade),
            ]
        return [
            f"{PRUNE_SQL};",  # Django runs a flush in one transaction: SET LOCAL lasts exactly that long
            *(f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};" for table in tables),
        ]

    hashers = override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher", *settings.PASSWORD_HASHERS]
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", sql_flush)
        hashers.enable()
        try:
            yield
        finally:
            hashers.disable()


@pytest.fixture(scope="session", autouse=True)
def _fresh_queues() -> None:
    """Start from clean queues and bindings on the test broker."""
    queues_reset()


@pytest.fixture
def worker_env(django_db_setup: None, django_db_blocker: Any) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "TEST_CONTROL_REDIS_URL": control.CONTROL_URL,
        # Tests decide when the sweep runs; nothing else dispatches behind their back.
        "WORKFLOW_STALL_SECONDS": "3600",
    }


@pytest.fixture
def workers(worker_env: dict[str, str]) -> Iterator[Workers]:
    control.client().flushdb()
    queues_purge()
    pool = Workers(worker_env)
    yield pool
    pool.stop_all()


@pytest.fixture
def worker(workers: Workers) -> processes.ManagedProcess:
    return workers.start()


@pytest.fixture(scope="session")
def anvil() -> Iterator[str]:
    port = free_port()
    node = processes.anvil(port=port, log_path=ARTIFACTS / "logs" / f"anvil-{port}.log")
    node.start().wait_ready(timeout=30)
    yield f"http://127.0.0.1:{port}"
    node.stop()


class AnvilFactory:
    """Starts extra anvil nodes for tests that change chain state (reorgs, mining mode)."""

    def __init__(self) -> None:
        self.nodes: list[processes.ManagedProcess] = []

    def start(self, *, port: int | None = None, extra: list[str] | None = None) -> str:
        port = port or free_port()
        node = processes.anvil(
            port=port, log_path=ARTIFACTS / "logs" / f"anvil-{port}-{uuid.uuid4().hex[:6]}.log", extra=extra
        )
        node.start().wait_ready(timeout=30)
        self.nodes.append(node)
        return f"http://127.0.0.1:{port}"

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def anvils() -> Iterator[AnvilFactory]:
    factory = AnvilFactory()
    yield factory
    factory.stop_all()


@pytest.fixture
def local_destinations(settings: Any) -> None:
    """Hooks may go to the executor servers the tests run on 127.0.0.1 over plain http."""
    settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS = True
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True


@pytest.fixture
def server() -> Iterator[Any]:
    """A running executor server (tests/support/executor_server.py) that answers every trigger with a
    signed skip until a test tells it otherwise."""
    from tests.support.executor_server import Executor, ExecutorServer

    running = ExecutorServer(Executor()).start()
    running.executor.on_trigger = running.executor.skip
    yield running
    running.stop()
