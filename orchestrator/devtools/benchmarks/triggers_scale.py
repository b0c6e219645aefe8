"""`bench triggers --scale N[,N...]`: N INTERVAL subscriptions on a 30 s interval (50,000: 1,667
firings a second) against the skip-only executor, for the duration, with where the CPU went.

Only the `ours` system: beat ticking the dispatcher, one worker (2 processes on `triggers`)
dispatching and delivering. The subscriptions are written by one INSERT ... SELECT FROM unnest
(bulk_create of 50,000 model instances took half a minute), due evenly over the first interval
from 30 s after they are written. Sent, missed, duplicated (by requestID, at the executor) and
lateness are bench triggers' own (`measure`).

CPU: every second the user + system time of each process of the run is read from /proc
(psutil), by kind: beat; the worker's main process (the consumer, which holds ETA tasks) and its
pool children (`worker_<queue>`); the executor; this database's PostgreSQL backends (their pids
from pg_stat_activity); PostgreSQL's shared processes (WAL writer, checkpointer, autovacuum:
shared with whatever else uses the server); redis-server (shared the same way). The machine's
busy CPU over the same window, minus all of these, is `others`: the noise of other work on the
machine. Reported per 1,000 firings the executor received in the window.

Signatures: the executor checks every hook's body HMAC and Standard Webhooks header and every
50th one's x-verifying-signature (executor.py); `scale_bad_signatures` counts the failures
(none for a case to hold)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from orchestrator.automations.models import AutomationConfig, Subscription, SubscriptionStatus
from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.executor import SkipExecutor
from orchestrator.operations.schedules import ensure_periodic_tasks

QUEUE = "triggers"
LEAD = timedelta(seconds=30)  # from the rows written to the first due time: worker and beat start
PG_SHARED = ("checkpointer", "background writer", "walwriter", "autovacuum", "stats", "logical replication")
SUBSCRIPTIONS = Subscription._meta.db_table


@dataclass
class _Seen:
    kind: str
    first: float
    last: float


@dataclass
class CpuMeter:
    """CPU seconds per kind of process over [start, stop], sampled every `every` seconds. A
    process that ends between two samples loses its last second; the pool children and database
    backends of this bench live through the whole window."""

    pids: Callable[[], dict[int, str]]
    every: float = 1.0
    seen: dict[int, _Seen] = field(default_factory=dict)
    machine: list[float] = field(default_factory=list)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> CpuMeter:
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="bench-cpu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        kinds: dict[str, float] = {}
        for seen in self.seen.values():
            kinds[seen.kind] = kinds.get(seen.kind, 0.0) + seen.last - seen.first
        busy = self.machine[-1] - self.machine[0]
        kinds["others"] = max(busy - sum(kinds.values()), 0.0)
        kinds["machine"] = busy
        return kinds

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.every):
                self._sample()
        finally:
            connection.close()  # this thread's own connection

    def _sample(self, first: bool = False) -> None:
        times = psutil.cpu_times()
        self.machine.append(sum(times) - times.idle - getattr(times, "iowait", 0.0))
        for pid, kind in self.pids().items():
            try:
                proc = self._procs.setdefault(pid, psutil.Process(pid))
                cpu = proc.cpu_times()
            except psutil.Error:
                continue  # it ended meanwhile
            used = cpu.user + cpu.system
            if pid not in self.seen:
                # Running when the window opened: from now on. Started within it: all of it.
                self.seen[pid] = _Seen(kind, used if first else 0.0, used)
            self.seen[pid].last = used


def process_kinds(*, beat: int, worker: int, executor: int) -> Callable[[], dict[int, str]]:
    """The pids of a run by kind, read again at every sample (backends come and go)."""
    redis_pid = int(redis.Redis.from_url(settings.CELERY_BROKER_URL).info("server")["process_id"])
    postmaster = _postmaster()

    def pids() -> dict[int, str]:
        kinds = {beat: "beat", worker: "worker", executor: "executor", redis_pid: "redis"}
        try:
            for child in psutil.Process(worker).children(recursive=True):
                kinds[child.pid] = f"worker_{QUEUE}"
        except psutil.Error:
            pass
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            kinds.update({pid: "postgres" for (pid,) in cursor.fetchall()})
        if postmaster is not None:
            for child in postmaster.children():
                try:
                    if any(name in " ".join(child.cmdline()) for name in PG_SHARED):
                        kinds[child.pid] = "postgres_shared"
                except psutil.Error:
                    continue
        return kinds

    return pids


def _postmaster() -> psutil.Process | None:
    """The PostgreSQL server's main process, when it runs on this machine."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    try:
        return psutil.Process(backend).parent()
    except psutil.Error:
        return None


def subscriptions_write(config: AutomationConfig, owner_username: str, starts: list[datetime]) -> None:
    """One subscription per start time, in one statement: columns as the ORM writes them."""
    owner_id = get_user_model().objects.get(username=owner_username).pk
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {SUBSCRIPTIONS} (id, config_id, chain_id, sub_account_address, module_address,
                token_inputs, token_limits, metadata, fee_token, fee_amount, commit_hash, status, next_run_at,
                execution_count, prev_execution_id, owner_id, created_at)
            SELECT gen_random_uuid(), %s, 31337, '0x' || lpad(to_hex(u.i), 40, '0'), '', '{{}}', '{{}}', '{{}}',
                '', '0', '', %s, u.at, 0, '', %s, now()
            FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(at, i)""",  # noqa: S608
            [config.pk, SubscriptionStatus.ACTIVE.value, owner_id, starts],
        )
        cursor.execute(f"VACUUM ANALYZE {SUBSCRIPTIONS}")


def run_case(
    *,
    config: AutomationConfig,
    owner_username: str,
    n: int,
    duration: int,
    interval: int,
    executor: SkipExecutor,
    env: dict[str, str],
    clean: Callable[[], Any],
    measure: Callable[..., Any],
    out: Callable[[str], Any],
) -> tuple[Any, dict[str, float], int, dict[str, int]]:
    """One scale case: (bench triggers' Case, CPU seconds by kind, hooks received in the window,
    the executor's signature checks of the case's hooks)."""
    clean()
    ensure_periodic_tasks()
    PeriodicTask.objects.filter(name="automation dispatch").update(enabled=True)
    t0 = timezone.now() + LEAD
    starts = [t0 + timedelta(seconds=interval * i / n) for i in range(n)]
    subscriptions_write(config, owner_username, starts)
    out(f"  scale, N={n}: {duration} s from {t0:%H:%M:%S} ...")
    log_dir = Path(settings.VAR_DIR) / "log"
    beat = processes.celery_beat(log_path=log_dir / f"bench-triggers-beat-scale-{n}.log", env=env)
    worker = processes.celery_worker(
        log_path=log_dir / f"bench-triggers-scale-{n}.log",
        concurrency=2,
        queues=QUEUE,
        name="bench-triggers-scale",
        env=env,
        extra=["--include", "orchestrator.devtools.benchmarks.tasks"],
    )
    checked = executor.checks()
    worker.start().wait_ready(timeout=60)
    try:
        beat.start().wait_ready(timeout=120)
        try:
            assert beat.pid and worker.pid and executor.process.pid
            meter = CpuMeter(process_kinds(beat=beat.pid, worker=worker.pid, executor=executor.process.pid))
            time.sleep(max((t0 - timezone.now()).total_seconds(), 0))
            meter.start()
            end = t0 + timedelta(seconds=duration)
            time.sleep(max((end - timezone.now()).total_seconds(), 0))
            cpu = meter.stop()
        finally:
            beat.stop()
        time.sleep(5)  # let the last calls land (bench triggers' GRACE)
    finally:
        worker.stop()
    received = sum(1 for _, at in executor.received() if t0.timestamp() <= at <= end.timestamp())
    case = measure(n, starts, end)
    signatures = {k: v - checked.get(k, 0) for k, v in executor.checks().items()}
    return case, cpu, received, signatures


def figures(
    case_row: dict[str, Any], late_s: list[float], cpu: dict[str, float], received: int, signatures: dict[str, int]
) -> dict[str, Any]:
    """The RESULT line's scale_* and cpu_s_per_1000_* figures of one case."""
    per_1000 = 1000 / max(received, 1)
    ordered = sorted(late_s)
    return {
        "scale_subscriptions": case_row["subscriptions"],
        "scale_due": case_row["due"],
        "scale_sent": case_row["due"] - case_row["missed"],
        "scale_missed": case_row["missed"],
        "scale_duplicated": case_row["duplicated"],
        "scale_firings_per_s": case_row["firings/s"],
        "scale_p50_lateness_s": case_row["lateness p50 ms"] / 1000,
        "scale_p99_lateness_s": case_row["lateness p99 ms"] / 1000,
        "scale_max_lateness_s": ordered[-1] if ordered else float("nan"),
        "scale_hooks_checked": signatures.get("calls", 0),
        "scale_bad_signatures": sum(v for k, v in signatures.items() if k.startswith("bad_")),
        "scale_verifying_checked": signatures.get("verifying_checked", 0),
        **{f"cpu_s_per_1000_{kind}": seconds * per_1000 for kind, seconds in sorted(cpu.items())},
    }


def late_spells(samples: list[tuple[float, float]], *, over_ms: float = 1000.0) -> list[tuple[int, int, int, float]]:
    """When the firings later than `over_ms` were due: (first second, last second after the first
    due time, how many, the worst lateness in seconds) per spell of consecutive seconds. One
    spell of a few seconds is a pause of the machine (every process stalls at once); lateness
    that grows to the end is a rate not held."""
    late: dict[int, list[float]] = {}
    for due_s, ms in samples:
        if ms > over_ms:
            late.setdefault(int(due_s), []).append(ms / 1000)
    spells: list[tuple[int, int, int, float]] = []
    for second in sorted(late):
        count, worst = len(late[second]), max(late[second])
        if spells and second - spells[-1][1] <= 1:
            first, _, n, w = spells[-1]
            spells[-1] = (first, second, n + count, max(w, worst))
        else:
            spells.append((second, second, count, worst))
    return spells


def held(fig: dict[str, Any]) -> bool:
    """The issue's bar: p99 lateness at most 1 s, none missed, none duplicated."""
    return bool(
        fig["scale_p99_lateness_s"] <= 1.0
        and fig["scale_missed"] == 0
        and fig["scale_duplicated"] == 0
        and fig["scale_bad_signatures"] == 0
    )


def run(
    *,
    sizes: list[int],
    out: Callable[[str], Any],
    **case: Any,
) -> None:
    """Every size in turn (`case`: run_case's other arguments); the table, the CPU table and
    `RESULT triggers_scale` of the largest size held (or, if none held, of the largest)."""
    rows, results = [], []
    for n in sizes:
        found, cpu, received, signatures = run_case(n=n, out=out, **case)
        fig = figures(found.row(), [ms / 1000 for ms in found.lateness_ms or []], cpu, received, signatures)
        results.append(fig)
        rows.append({"N": n, **{k.removeprefix("scale_"): v for k, v in fig.items() if k.startswith("scale_")}})
        out("    " + "  ".join(f"{k}={common._fmt(v)}" for k, v in fig.items()))
        spells = late_spells(found.samples or [])
        out(
            "    later than 1 s: "
            + (", ".join(f"due {a}-{b} s: {n} (worst {w:.1f} s)" for a, b, n, w in spells[:8]) or "none")
            + (f", and {len(spells) - 8} more spells" if len(spells) > 8 else "")
        )
    out("")
    common.table(rows, out)
    out("")
    out("CPU seconds per 1,000 firings, by process kind:")
    common.table(
        [
            {"N": f["scale_subscriptions"]}
            | {k.removeprefix("cpu_s_per_1000_"): v for k, v in f.items() if k.startswith("cpu_")}
            for f in results
        ],
        out,
    )
    kept = [f for f in results if held(f)]
    best = max(kept or results, key=lambda f: f["scale_subscriptions"])
    out(common.result_line("triggers_scale", {"scale_held": int(bool(kept)), **best}))
