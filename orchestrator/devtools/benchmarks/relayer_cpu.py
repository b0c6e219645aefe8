"""`bench relayer`'s measures of where the time goes: CPU seconds per process kind over a case
(this process, the relay worker's processes, anvil, the PostgreSQL backends serving this
database), and with --profile the cProfile totals of the worker's tasks (relayer/profiling.py)
and of this process's requests."""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from django.db import connection

KINDS = ("bench", "worker", "anvil", "postgres")


def _kind(proc: psutil.Process) -> str | None:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    if "anvil" in cmdline:
        return "anvil"
    if "celery" in cmdline:
        return "worker"
    return None


def _processes() -> dict[int, tuple[str, psutil.Process]]:
    me = psutil.Process()
    found = {me.pid: ("bench", me)}
    for child in me.children(recursive=True):
        kind = _kind(child)
        if kind is not None:
            found[child.pid] = (kind, child)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        for (pid,) in cursor.fetchall():
            try:
                found[pid] = ("postgres", psutil.Process(pid))
            except psutil.Error:
                continue
    return found


def _cpu(procs: dict[int, tuple[str, psutil.Process]]) -> dict[int, float]:
    out = {}
    for pid, (_, proc) in procs.items():
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


@contextmanager
def cpu_by_kind() -> Iterator[dict[str, float]]:
    """Yields a dict filled on exit with the CPU seconds each kind of process used in the block
    (processes that started inside it count from zero; ones that ended inside it are lost)."""
    before_procs = _processes()
    before = _cpu(before_procs)
    used: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    yield used
    after_procs = {**before_procs, **_processes()}
    after = _cpu(after_procs)
    for pid, seconds in after.items():
        used[after_procs[pid][0]] += seconds - before.get(pid, 0.0)


@contextmanager
def profiled(enabled: bool, into: cProfile.Profile) -> Iterator[None]:
    if not enabled:
        yield
        return
    into.enable()
    try:
        yield
    finally:
        into.disable()


def print_profiles(directory: Path, bench: cProfile.Profile, out: Callable[[str], Any], *, lines: int = 30) -> None:
    files = sorted(directory.glob("worker-*.prof"))
    if files:
        stats = pstats.Stats(str(files[0]))
        for extra in files[1:]:
            stats.add(str(extra))
        _print(f"relay worker processes ({len(files)}), all tasks", stats, out, lines)
    _print("this process, while requesting relays", pstats.Stats(bench), out, lines)


def _print(title: str, stats: pstats.Stats, out: Callable[[str], Any], lines: int) -> None:
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats.stream = buffer  # type: ignore[attr-defined]
        stats.strip_dirs().sort_stats(order).print_stats(lines)
        out(f"cProfile, {title}, by {order}:")
        text = buffer.getvalue()
        out(text[text.find("   ncalls") :] if "   ncalls" in text else text)
