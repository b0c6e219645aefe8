"""Fixtures that start the real parts: Celery workers on the real broker, and anvil.

The suite runs against PostgreSQL and Redis (or RabbitMQ) named by DATABASE_URL and
CELERY_BROKER_URL; `make test` sets both. Workers are separate processes pointed at the test
database that pytest-django created, so tests that use them need committed data
(`@pytest.mark.django_db(transaction=True)`)."""

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
from orchestrator.infra.broker import queues_purge, queues_reset
from tests.support import control

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


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
