"""`bench triggers`: INTERVAL firings at scale, against django-celery-beat's usual way.

For each N (1,000 and 10,000 by default) N subscriptions on a 30 s interval, their due times
spread evenly over the interval, run for the given duration against a fast local executor
that answers skip:
- ours: the fixed dispatcher (beat ticks `automations.dispatch` every second; due
  subscriptions are claimed in batches; hooks go out concurrently);
- baseline: one django-celery-beat PeriodicTask per subscription (DatabaseScheduler), each run
  a Celery task that fires that one subscription through the same firing and delivery code.
Both use the same worker (2 processes on `triggers`) and the same executor.

Lateness is the time the executor received the hook minus the firing's due time. Missed: due
times in the window (up to 5 s before the end) that never reached the executor. Duplicated:
hooks the executor received more than once, plus due times fired twice (the baseline's task
counts the unique-key collisions it meets). Finally, the dispatcher's cost with 1,000,000
subscriptions registered, of which 1,000 are due (and with 1,000, 10,000 and 100,000
registered, to show it does not grow with the table): triggers_dispatch.py. With --prune-old,
the retention case (triggers_prune.py): dispatch lateness while retention prunes that many old
firings, against none pruning. With --scale, only the scale case (triggers_scale.py): N
subscriptions, sent, missed, duplicated, lateness and CPU seconds per 1,000 firings per process
kind; with --profile too, first a profile of delivery (triggers_delivery.py)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks
from eth_account import Account

from orchestrator.automations.models import AutomationConfig, Firing, Subscription
from orchestrator.automations.services.configs import config_create, executor_register
from orchestrator.automations.typed_data import kernel_action_sign
from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import (
    common,
    triggers_delivery,
    triggers_dispatch,
    triggers_prune,
    triggers_scale,
)
from orchestrator.devtools.benchmarks.executor import SkipExecutor
from orchestrator.devtools.benchmarks.tasks import BASELINE_DUPLICATES_KEY
from orchestrator.operations.schedules import ensure_periodic_tasks

BENCH_USER = "bench-triggers"
BASELINE_PREFIX = "bench trigger "
LOCAL = {"AUTOMATION_ALLOW_INSECURE_DESTINATIONS": "1", "AUTOMATION_ALLOW_PRIVATE_DESTINATIONS": "1"}
GRACE = timedelta(seconds=5)


@dataclass
class Case:
    system: str
    n: int
    expected: int = 0
    delivered: int = 0
    duplicated: int = 0
    lateness_ms: list[float] | None = None
    seconds: float = 0.0
    # (due time in seconds after the first due time, lateness ms) of every delivered firing.
    samples: list[tuple[float, float]] | None = None

    def row(self) -> dict[str, Any]:
        late = self.lateness_ms or []
        return {
            "system": self.system,
            "subscriptions": self.n,
            "due": self.expected,
            "firings/s": self.delivered / self.seconds if self.seconds else 0.0,
            "lateness p50 ms": common.percentile(late, 50),
            "lateness p99 ms": common.percentile(late, 99),
            "missed": self.expected - self.delivered,
            "duplicated": self.duplicated,
        }


def _config(base_url: str) -> tuple[AutomationConfig, str]:
    owner, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    account = Account.create()
    executor = executor_register(owner=owner, address=account.address, name="bench executor", metadata={})
    signature = kernel_action_sign(account, destination_url=base_url, verify_payload=True, action="CREATE")
    created = config_create(
        executor=executor,
        source_type="INTERVAL",
        source_value=30,
        base_url=base_url,
        verify_payload=True,
        relayer_count=1,
        autosign=False,
        signature=signature,
    )
    return created.config, created.hmac_key


def _clean() -> None:
    """Removes what earlier runs left: the bench's firings, subscriptions and periodic tasks."""
    PeriodicTask.objects.filter(name__startswith=BASELINE_PREFIX).delete()
    PeriodicTasks.update_changed()
    triggers_dispatch.rows_delete(BENCH_USER)


def _subscriptions(config: AutomationConfig, n: int, starts: list[datetime], scheduled: bool) -> list[Subscription]:
    owner = get_user_model().objects.get(username=BENCH_USER)
    rows = [
        Subscription(
            config=config,
            owner=owner,
            chain_id=31337,
            sub_account_address=f"0x{i + 1:040x}",
            next_run_at=starts[i] if scheduled else None,
        )
        for i in range(n)
    ]
    return Subscription.objects.bulk_create(rows, batch_size=5000)


def _starts(n: int, t0: datetime, interval: int) -> list[datetime]:
    return [t0 + timedelta(seconds=interval * i / n) for i in range(n)]


def _expected(starts: list[datetime], interval: int, until: datetime) -> int:
    step = timedelta(seconds=interval)
    return sum(int((until - s) / step) + 1 for s in starts if s <= until)


def _measure(
    case: Case,
    subs: list[Subscription],
    starts: list[datetime],
    interval: int,
    until: datetime,
    executor: SkipExecutor,
    began: float,
) -> Case:
    received = executor.received()
    counts = Counter(rid for rid, _ in received)
    first: dict[str, float] = {}
    for rid, at in received:
        first.setdefault(rid, at)
    due = dict(
        Firing.objects.filter(subscription__owner__username=BENCH_USER, due_at__lte=until).values_list(
            "request_id", "due_at"
        )
    )
    late = [(first[rid] - when.timestamp()) * 1000 for rid, when in due.items() if rid in first]
    case.samples = [
        (when.timestamp() - began, (first[rid] - when.timestamp()) * 1000) for rid, when in due.items() if rid in first
    ]
    case.expected = _expected(starts, interval, until)
    case.delivered = len(late)
    case.duplicated += sum(c - 1 for rid, c in counts.items() if rid in due and c > 1)
    case.lateness_ms = late
    case.seconds = max(until.timestamp() - began, 1.0)
    return case


def _run_case(
    system: str,
    config: AutomationConfig,
    n: int,
    duration: int,
    interval: int,
    executor: SkipExecutor,
    out: Callable[[str], Any],
    alongside: Callable[[datetime, datetime], Any] | None = None,
) -> Case:
    """One case. `alongside(first due time, end)`, if given, runs in a thread from the first due
    time on (the pruner of bench triggers --prune-old); the case waits for it to return."""
    _clean()
    ensure_periodic_tasks()
    # Time to create the rows and start the worker and beat before the first due time.
    t0 = timezone.now() + timedelta(seconds=20 + n / 500)
    starts = _starts(n, t0, interval)
    subs = _subscriptions(config, n, starts, scheduled=system == "ours")
    PeriodicTask.objects.filter(name="automation dispatch").update(enabled=system == "ours")
    if system == "baseline":
        _periodic_tasks(subs, starts, interval)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(BASELINE_DUPLICATES_KEY)
    out(f"  {system}, N={n}: {duration} s from {t0:%H:%M:%S} ...")
    log_dir = Path(settings.VAR_DIR) / "log"
    env = {**LOCAL}
    beat = processes.celery_beat(log_path=log_dir / f"bench-triggers-beat-{system}-{n}.log", env=env)
    with common.worker(name=f"triggers-{system}", concurrency=2, queues="triggers", env=env):
        beat.start().wait_ready(timeout=120)
        try:
            end = t0 + timedelta(seconds=duration)
            companion = _start_alongside(alongside, t0, end)
            while timezone.now() < end:
                time.sleep(1)
            if companion is not None:
                companion.join()
        finally:
            beat.stop()
        time.sleep(GRACE.total_seconds())  # let the last calls land
    case = Case(system, n)
    case.duplicated = int(redis.Redis.from_url(settings.CELERY_BROKER_URL).get(BASELINE_DUPLICATES_KEY) or 0)
    _measure(case, subs, starts, interval, end - GRACE, executor, t0.timestamp())
    PeriodicTask.objects.filter(name="automation dispatch").update(enabled=True)
    return case


def _start_alongside(
    alongside: Callable[[datetime, datetime], Any] | None, t0: datetime, end: datetime
) -> threading.Thread | None:
    if alongside is None:
        return None

    def run() -> None:
        time.sleep(max((t0 - timezone.now()).total_seconds(), 0))
        try:
            alongside(t0, end)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run, name="bench-alongside", daemon=True)
    thread.start()
    return thread


def _periodic_tasks(subs: list[Subscription], starts: list[datetime], interval: int) -> None:
    """The usual way: one PeriodicTask per subscription, first due at its start."""
    schedule, _ = IntervalSchedule.objects.get_or_create(every=interval, period=IntervalSchedule.SECONDS)
    step = timedelta(seconds=interval)
    PeriodicTask.objects.bulk_create(
        [
            PeriodicTask(
                name=f"{BASELINE_PREFIX}{sub.pk}",
                task="bench.trigger_fire",
                interval=schedule,
                args=f'["{sub.pk}", {start.timestamp()}, {interval}]',
                queue="triggers",
                last_run_at=start - step,
            )
            for sub, start in zip(subs, starts, strict=True)
        ],
        batch_size=5000,
    )
    PeriodicTasks.update_changed()


def run(
    *,
    sizes: list[int],
    duration: int,
    interval: int,
    registered: int,
    due: int,
    out: Callable[[str], Any],
    prune_old: int = 0,
    prune_subscriptions: int = 1000,
    prune_only: bool = False,
    profile: bool = False,
    dispatch_only: bool = False,
    scale: list[int] | None = None,
) -> None:
    common.require_real_services()
    logging.getLogger("orchestrator.automations").setLevel(logging.WARNING)  # one line per batch: noise here
    settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS = settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True
    port = common.free_port()
    _clean()
    AutomationConfig.objects.filter(executor__owner__username=BENCH_USER).update(status="deleted")
    config, hmac_key = _config(f"http://127.0.0.1:{port}")
    verifying = config.verifying_key.address if config.verifying_key else ""
    record = Path(settings.VAR_DIR) / f"bench-triggers-{uuid.uuid4().hex[:6]}.calls"
    out(f"executor: skip-only, asyncio, own process, port {port}; worker: 2 processes on 'triggers'")
    cases = []
    prune_rows: list[dict[str, Any]] = []
    prune_figures: dict[str, Any] = {}
    if scale:
        with SkipExecutor(port=port, hmac_key=hmac_key, record=record, verifying_address=verifying) as executor:
            if profile:
                triggers_delivery.delivery_profile(config=config, owner_username=BENCH_USER, due=2000, out=out)

            def measure(n: int, starts: list[datetime], end: datetime) -> Case:
                return _measure(Case("ours", n), [], starts, interval, end - GRACE, executor, starts[0].timestamp())

            triggers_scale.run(
                config=config,
                owner_username=BENCH_USER,
                sizes=scale,
                duration=duration,
                interval=interval,
                executor=executor,
                env=LOCAL,
                clean=_clean,
                measure=measure,
                out=out,
            )
        _clean()
        record.unlink(missing_ok=True)
        return
    with SkipExecutor(port=port, hmac_key=hmac_key, record=record, verifying_address=verifying) as executor:
        for n in [] if prune_only or dispatch_only else sizes:
            for system in ("ours", "baseline"):
                cases.append(_run_case(system, config, n, duration, interval, executor, out))
                out("    " + "  ".join(f"{k}={common._fmt(v)}" for k, v in cases[-1].row().items()))
        if prune_old and not dispatch_only:
            prune_rows, prune_figures = triggers_prune.run_case(
                run_case=_run_case,
                config=config,
                n=prune_subscriptions,
                old=prune_old,
                duration=duration,
                interval=interval,
                executor=executor,
                out=out,
            )
    if prune_only:
        _clean()
        record.unlink(missing_ok=True)
        out("")
        common.table(prune_rows, out)
        out(common.result_line("triggers_prune", prune_figures))
        return
    out(
        "dispatch cost (one dispatcher call, its delivery messages sent to the broker; "
        f"median of {triggers_dispatch.RUNS}):"
    )
    costs = {
        size: triggers_dispatch.dispatch_cost(
            config=config,
            owner_username=BENCH_USER,
            registered=size,
            due=due,
            profile=profile and size == registered,
            out=out,
        )
        for size in sorted({due, 10 * due, 100 * due, registered})
    }
    _clean()
    record.unlink(missing_ok=True)
    if cases:
        out("")
        common.table([c.row() for c in cases], out)
    out("")
    common.table([{"registered": k, "due": due, "dispatch ms": v} for k, v in costs.items()], out)
    dispatch_figures = {f"dispatch_ms_{k}_registered_{due}_due": v for k, v in costs.items()}
    if dispatch_only:
        out(common.result_line("triggers", dispatch_figures))
        return
    if prune_rows:
        out("")
        common.table(prune_rows, out)
    largest = max(sizes)
    ours = next(c for c in cases if c.system == "ours" and c.n == largest).row()
    base = next(c for c in cases if c.system == "baseline" and c.n == largest).row()
    out(
        common.result_line(
            "triggers",
            {
                "n": largest,
                "p99_lateness_ms": ours["lateness p99 ms"],
                "missed": ours["missed"],
                "duplicated": ours["duplicated"],
                "p50_lateness_ms": ours["lateness p50 ms"],
                "firings_per_s": ours["firings/s"],
                "baseline_p99_lateness_ms": base["lateness p99 ms"],
                "baseline_missed": base["missed"],
                "baseline_duplicated": base["duplicated"],
                **dispatch_figures,
                **{f"prune_{k}": v for k, v in prune_figures.items()},
            },
        )
    )
