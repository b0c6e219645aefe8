"""Extra real servers a test owns for itself: a Redis it may stop, a web process it may point at
them. The shared services are never stopped by a test."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import httpx
import redis
from django.conf import settings

from orchestrator.devtools.processes import ManagedProcess

LOGS = Path(settings.BASE_DIR) / "test-artifacts" / "logs"


def redis_server(port: int) -> ManagedProcess:
    """redis-server on 127.0.0.1:port, keeping nothing on disk; started and ready."""

    def answers() -> bool:
        try:
            return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    log = LOGS / f"redis-{port}-{uuid.uuid4().hex[:6]}.log"
    server = ManagedProcess("redis", argv, log_path=log, ready_check=answers)
    return server.start().wait_ready(timeout=20)


def web_server(port: int, env: dict[str, str]) -> ManagedProcess:
    """`manage.py runserver` on 127.0.0.1:port with `env` (the test database, its broker, ...)."""

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    argv = [
        sys.executable,
        str(Path(settings.BASE_DIR) / "manage.py"),
        "runserver",
        f"127.0.0.1:{port}",
        "--noreload",
        "--skip-checks",
    ]
    web = ManagedProcess("web", argv, log_path=LOGS / f"web-{port}.log", env=env, ready_check=answers)
    return web.start().wait_ready(timeout=60)
