"""What every benchmark shares: a worker it starts itself, percentiles, the table, RESULT."""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from orchestrator.devtools import processes


def require_real_services() -> None:
    db = settings.DATABASES["default"]["ENGINE"]
    if db != "django.db.backends.postgresql" or not settings.CELERY_BROKER_URL.startswith("redis"):
        raise CommandError(
            "Benchmarks run on PostgreSQL and Redis: set DATABASE_URL and CELERY_BROKER_URL (`make bench` does)."
        )


@contextmanager
def worker(
    *,
    name: str,
    concurrency: int = 2,
    queues: str = "workflows,triggers,relay",
    env: dict[str, str] | None = None,
) -> Iterator[None]:
    log = Path(settings.VAR_DIR) / "log" / f"bench-{name}-{os.getpid()}.log"
    # The bare round-trip tasks live here, never in a production worker: only bench workers load them.
    proc = processes.celery_worker(
        log_path=log,
        concurrency=concurrency,
        queues=queues,
        name=f"bench-{name}",
        env=env,
        extra=["--include", "orchestrator.devtools.benchmarks.tasks"],
    )
    proc.start().wait_ready(timeout=60)
    try:
        yield
    finally:
        proc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise CommandError(f"benchmark timed out waiting for {what}")
        time.sleep(interval)


def table(rows: list[dict[str, Any]], out: Callable[[str], Any]) -> None:
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(_fmt(r[h])) for r in rows)) for h in headers}
    out("  ".join(h.ljust(widths[h]) for h in headers))
    out("  ".join("-" * widths[h] for h in headers))
    for row in rows:
        out("  ".join(_fmt(row[h]).ljust(widths[h]) for h in headers))


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def result_line(name: str, figures: dict[str, Any]) -> str:
    return f"RESULT {name} " + " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
