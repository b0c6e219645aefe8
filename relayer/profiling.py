"""RELAYER_PROFILE_DIR: cProfile every task a worker process runs, to see where a relay's time
goes (`bench relayer --profile` sets it for the worker it starts; py-spy is not installed).

Each pool process writes its totals to <dir>/worker-<pid>.prof at most once a second and
after its last task; the bench merges them. Unset (always, outside that bench), nothing is
connected and a task costs nothing more."""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path

from celery.signals import task_postrun, task_prerun, worker_process_shutdown

ENV = "RELAYER_PROFILE_DIR"
_state: dict[str, float] = {"dumped": 0.0}
_profiler: list[cProfile.Profile] = []


def profiling_connect() -> None:
    """Connects the task signals when RELAYER_PROFILE_DIR is set."""
    if os.environ.get(ENV):
        task_prerun.connect(_start, weak=False)
        task_postrun.connect(_stop, weak=False)
        worker_process_shutdown.connect(_dump, weak=False)


def _start(**_: object) -> None:
    if not _profiler:
        # CPU time, not wall: a worker waiting on PostgreSQL or the node is not using a core.
        _profiler.append(cProfile.Profile(time.process_time))
    _profiler[0].enable()


def _stop(**_: object) -> None:
    profiler = _profiler[0]
    profiler.disable()
    now = time.monotonic()
    if now - _state["dumped"] > 1.0:
        _state["dumped"] = now
        _dump()


def _dump(**_: object) -> None:
    if _profiler:
        _profiler[0].dump_stats(str(Path(os.environ[ENV]) / f"worker-{os.getpid()}.prof"))
