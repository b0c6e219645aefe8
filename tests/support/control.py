"""A Redis side channel between a test and the workflows it runs in a real worker."""

from __future__ import annotations

import os
import time

import redis

CONTROL_URL = os.environ.get("TEST_CONTROL_REDIS_URL", "redis://127.0.0.1:6379/14")


def client() -> redis.Redis:
    return redis.Redis.from_url(CONTROL_URL, decode_responses=True)


def signal(name: str) -> None:
    client().set(name, "1", ex=600)


def is_set(name: str) -> bool:
    return bool(client().exists(name))


def wait_for_signal(name: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_set(name):
            return True
        time.sleep(0.05)
    return False


def count(name: str) -> int:
    """How many times `bump(name)` was called."""
    return int(client().get(name) or 0)


def bump(name: str) -> None:
    client().incr(name)
    client().expire(name, 600)
