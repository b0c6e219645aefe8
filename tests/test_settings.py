"""Start-up configuration from the environment, and the engine's declarations that are checked
when they are made (workflow shape; the retry backoff is tested in tests/engine/test_definition.py)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from orchestrator.engine import Step, Workflow, registry
from orchestrator.engine.definition import WorkflowRegistry
from orchestrator.engine.errors import UnknownWorkflow
from orchestrator.infra import config

SETUP = "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE','orchestrator.settings'); django.setup()"
POSTGRES = "postgres://postgres@127.0.0.1:5432/never_connected"
REDIS = "redis://127.0.0.1:6379/13"


def start_up(**overrides: str) -> subprocess.CompletedProcess[str]:
    """Loads the real settings in a fresh interpreter with the given environment."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update({"DATABASE_URL": POSTGRES, "CELERY_BROKER_URL": REDIS})
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "-c", SETUP],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_settings(monkeypatch: pytest.MonkeyPatch, *, unset: tuple[str, ...] = (), **overrides: str) -> dict[str, Any]:
    """Runs orchestrator/settings.py in this process with start_up's environment (less `unset`)
    and returns what it defines. The settings module only reads the environment, so this checks
    what a fresh interpreter would, without a process start (a second or two each here)."""
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    for name, value in {"DATABASE_URL": POSTGRES, "CELERY_BROKER_URL": REDIS, **overrides}.items():
        monkeypatch.setenv(name, value)
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    return runpy.run_path(str(Path(settings.BASE_DIR) / "orchestrator" / "settings.py"))


def refused_start_up(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> tuple[str, str]:
    """The start-up error the settings raise with this environment: its last line (the last line
    a fresh interpreter would print) and the whole traceback with its causes."""
    with pytest.raises(ImproperlyConfigured) as refused:
        read_settings(monkeypatch, **overrides)
    assert type(refused.value) is ImproperlyConfigured
    return str(refused.value).strip().splitlines()[-1], "".join(traceback.format_exception(refused.value))


def test_it_starts_with_the_defaults_and_with_good_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh interpreter: django.setup() with these values, logging configuration included.
    result = start_up(
        DB_POOL_MIN_SIZE="0",
        DB_POOL_MAX_SIZE="1",
        DB_POOL_TIMEOUT="0.5",
        CELERY_BROKER_URL="amqps://guest:guest@mq.internal:5671//;amqp://guest:guest@127.0.0.1:5672//",
        WORKFLOW_STALL_SECONDS="30.5",
        DJANGO_DEBUG="off",
        LOG_FORMAT="json",
        LOG_LEVEL="debug",
        ANVIL_PORT="65535",
    )
    assert result.returncode == 0, result.stderr
    # The defaults and the other URL spellings only go through the settings module.
    read_settings(monkeypatch)
    read_settings(
        monkeypatch, DATABASE_URL="postgresql://app@db.internal/orders", CELERY_BROKER_URL="rediss://r:6380/1"
    )


def test_it_defaults_to_the_embedded_servers_of_make_run(monkeypatch: pytest.MonkeyPatch) -> None:
    read = read_settings(
        monkeypatch,
        unset=("DATABASE_URL", "CELERY_BROKER_URL"),
        EMBEDDED_POSTGRES_PORT="25432",
        EMBEDDED_REDIS_PORT="26379",
    )
    assert (read["DATABASES"]["default"]["PORT"], read["CELERY_BROKER_URL"]) == (25432, "redis://127.0.0.1:26379/0")


@pytest.mark.parametrize(
    "name,value",
    [
        ("DB_POOL_MIN_SIZE", "-1"),
        ("DB_POOL_MAX_SIZE", "0"),
        ("DB_POOL_MAX_SIZE", "eight"),
        ("DB_POOL_TIMEOUT", "0"),
        ("EMBEDDED_POSTGRES_PORT", "0"),
        ("EMBEDDED_REDIS_PORT", "65536"),
        ("DB_CONNECT_TIMEOUT", "soon"),
        ("DB_STATEMENT_TIMEOUT_MS", "1.5"),
        ("WORKFLOW_STALL_SECONDS", "-5"),
        ("WORKFLOW_STALL_SECONDS", "abc"),
        ("WORKFLOW_STALL_SECONDS", "nan"),
        ("WORKFLOW_STALL_SECONDS", "inf"),
        ("WORKFLOW_SWEEP_SECONDS", "0.1"),
        ("WORKFLOW_MAX_COUNTDOWN_SECONDS", "-1"),
        ("WORKFLOW_SWEEP_BATCH", "0"),
        ("DJANGO_DEBUG", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("DATABASE_URL", "garbage"),
        ("DATABASE_URL", ""),
        ("DATABASE_URL", "postgres://u@host:notaport/db"),
        ("DATABASE_URL", "sqlite:///var/db.sqlite3"),
        ("DATABASE_URL", "mysql://u:secret@host/db"),
        ("CELERY_BROKER_URL", "filesystem://"),
        ("CELERY_BROKER_URL", "memory://"),
        ("CELERY_BROKER_URL", "sqla+postgresql://u@host/db"),
        ("CELERY_BROKER_URL", "redis://r:6379/0;filesystem://"),
        ("CELERY_BROKER_URL", "127.0.0.1:6379"),
        ("CELERY_BROKER_URL", ""),
        ("CELERY_TASK_TIME_LIMIT", "0"),
        ("CELERY_PREFETCH_MULTIPLIER", "many"),
        ("CELERY_VISIBILITY_TIMEOUT", "59"),
        ("ANVIL_PORT", "99999"),
    ],
)
@pytest.mark.filterwarnings("ignore:Engine not recognized from url")
def test_it_stops_start_up_naming_the_variable_with_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    last_line, whole = refused_start_up(monkeypatch, **{name: value})
    assert name in last_line, whole


def test_it_stops_a_fresh_interpreter_with_the_error_as_its_last_line() -> None:
    result = start_up(WORKFLOW_STALL_SECONDS="abc")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured"), result.stderr
    assert "WORKFLOW_STALL_SECONDS" in last_line, result.stderr


def test_it_refuses_a_pool_whose_minimum_exceeds_its_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    last_line, _ = refused_start_up(monkeypatch, DB_POOL_MIN_SIZE="9", DB_POOL_MAX_SIZE="8")
    assert "DB_POOL_MIN_SIZE=9 and DB_POOL_MAX_SIZE=8" in last_line


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("DATABASE_URL", "mysql://app:s3cret@db.internal/orders", "must be a PostgreSQL URL"),
        ("CELERY_BROKER_URL", "sqs://AKIA:s3cret@", "must be a Redis or RabbitMQ URL"),
    ],
)
def test_it_names_the_servers_it_needs_without_showing_a_password(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    last_line, whole = refused_start_up(monkeypatch, **{name: value})
    assert expected in last_line, whole
    assert "s3cret" not in whole


# --- the readers, in process ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected", [("", True), ("1", True), ("Yes", True), ("on", True), ("0", False), (" OFF ", False)]
)
def test_it_reads_booleans_in_the_usual_spellings(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("TEST_FLAG", raw)
    assert config.env_bool("TEST_FLAG", True) is expected


def test_it_uses_the_default_when_a_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_NUMBER", raising=False)
    assert config.env_int("TEST_NUMBER", 7, minimum=1, maximum=10) == 7
    assert config.env_float("TEST_NUMBER", 2.5, minimum=1) == 2.5
    assert config.env_str("TEST_NUMBER", "x") == "x"


def test_it_enforces_the_bounds_of_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_NUMBER", "11")
    with pytest.raises(ImproperlyConfigured, match="TEST_NUMBER=11 must be <= 10"):
        config.env_int("TEST_NUMBER", 7, maximum=10)
    monkeypatch.setenv("TEST_NUMBER", "0.5")
    with pytest.raises(ImproperlyConfigured, match=r"TEST_NUMBER=0\.5 must be >= 1"):
        config.env_float("TEST_NUMBER", 2.0, minimum=1)
    monkeypatch.setenv("TEST_NUMBER", "10")
    assert config.env_int("TEST_NUMBER", 7, minimum=10, maximum=10) == 10


@pytest.mark.filterwarnings("ignore:Engine not recognized from url")
def test_it_reads_a_database_url_and_refuses_one_without_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DB", "postgres://app:secret@db.internal:6432/orders")
    db = config.env_db("TEST_DB", "postgres://localhost/x")
    assert (db["ENGINE"], db["HOST"], db["PORT"], db["NAME"]) == (
        "django.db.backends.postgresql",
        "db.internal",
        6432,
        "orders",
    )
    monkeypatch.setenv("TEST_DB", "db.internal/orders")
    with pytest.raises(ImproperlyConfigured, match="TEST_DB is not a database URL"):
        config.env_db("TEST_DB", "postgres://localhost/x")


# --- workflow declarations ------------------------------------------------------------------


def _noop(ctx: object) -> None:
    return None


def test_it_rejects_a_workflow_with_duplicate_step_names() -> None:
    with pytest.raises(ValueError, match="unique names"):
        Workflow(kind="test.duplicates", steps=(Step("charge", _noop), Step("charge", _noop)))


def test_it_rejects_a_workflow_without_steps() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Workflow(kind="test.empty", steps=())


def test_it_raises_unknown_workflow_for_an_unregistered_kind() -> None:
    own = WorkflowRegistry()
    own.register(Workflow(kind="test.one", steps=(Step("only", _noop),)))
    assert own.kinds() == ["test.one"]
    with pytest.raises(UnknownWorkflow):
        own.get("test.other")
    assert "test.effects" in registry.kinds()
