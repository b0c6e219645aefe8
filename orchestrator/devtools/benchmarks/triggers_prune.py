"""`bench triggers`, the retention case: INTERVAL dispatch lateness while retention prunes a
million old firings, against the same dispatch on the same table without pruning, interleaved.

The old firings (1,000,000 by default, `--prune-old`) are older than RETENTION_FIRINGS_DAYS and
final (skipped), of a cancelled subscription of their own; one INSERT ... SELECT from
generate_series per 100,000 writes them, then VACUUM ANALYZE, as an old table would be. Then the
`ours` case of bench triggers runs once, and beside it the pruner alternates: a run of
retention_prune (its settings' batch and pause) cut to 10 s, then 10 s of rest, until the old
firings are gone. The firings due in its pruning slots are compared with those due in its rest
slots: the same subscriptions, workers, table and background load, only the pruner on or off."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from orchestrator.automations.models import ZERO_HASH, AutomationConfig, Subscription, SubscriptionStatus
from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.executor import SkipExecutor
from orchestrator.operations.retention import retention_prune

OLD_OWNER = "bench-triggers-old"
CHUNK = 100_000
INSERT = """
INSERT INTO automations_firing (
    id, subscription_id, key, request_id, trigger_type, due_at, request, status, reason, attempts,
    output_tx_hash, report_status, correlation_id, created_at
)
SELECT gen_random_uuid(), %(sub)s, 'bench-old:' || g, 'bench-old-' || g, 'INTERVAL', t, '{}'::jsonb,
       'skipped', '', 0, %(zero)s, '', '', t
FROM generate_series(%(first)s, %(last)s) g, LATERAL (SELECT %(newest)s - g * interval '1 second' AS t) at
"""


@dataclass
class PruneRun:
    """The pruner's slots, in seconds after the first due time: when it ran and when it rested."""

    pruning: list[tuple[float, float]] = field(default_factory=list)
    quiet: list[tuple[float, float]] = field(default_factory=list)
    pruned: int = 0


def _old_subscription(config: AutomationConfig) -> Subscription:
    owner, _ = get_user_model().objects.get_or_create(username=OLD_OWNER)
    return Subscription.objects.create(
        config=config,
        owner=owner,
        chain_id=31337,
        sub_account_address="0x" + "01" * 20,
        status=SubscriptionStatus.CANCELLED,
        cancelled_at=timezone.now(),
    )


def _drop_old() -> None:
    """What an earlier run left of the old rows (the pruner deletes them; an interrupted run may not)."""
    subs = list(Subscription.objects.filter(owner__username=OLD_OWNER).values_list("pk", flat=True))
    if subs:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM automations_firing WHERE subscription_id = ANY(%s)", [subs])
        Subscription.objects.filter(pk__in=subs).delete()


def _insert_old(config: AutomationConfig, n: int, out: Callable[[str], Any]) -> float:
    _drop_old()
    sub = _old_subscription(config)
    newest = timezone.now() - timedelta(days=settings.RETENTION_FIRINGS_DAYS + 10)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        for first in range(1, n + 1, CHUNK):
            last = min(first + CHUNK - 1, n)
            cursor.execute(INSERT, {"sub": sub.pk, "zero": ZERO_HASH, "first": first, "last": last, "newest": newest})
        cursor.execute("VACUUM ANALYZE automations_firing")
    seconds = time.perf_counter() - began
    out(f"  {n} old firings inserted and vacuumed in {seconds:.1f} s (created before {newest:%Y-%m-%d})")
    return seconds


def _pruner(run: PruneRun, n: int, slot: float) -> Callable[[datetime, datetime], None]:
    """Prunes for `slot` seconds, rests for `slot`, and so on until the old firings are gone: the
    firings due while it rests are the same run's baseline, on the same table, workers and load."""

    def offset(t0: datetime) -> float:
        return (timezone.now() - t0).total_seconds()

    def prune(t0: datetime, end: datetime) -> None:
        while run.pruned < n and timezone.now() < end:
            began = offset(t0)
            # A run of the pruner as beat starts it, with only its time cut to the slot.
            result = retention_prune(max_rows=n + 1, max_seconds=slot)
            run.pruning.append((began, offset(t0)))
            run.pruned += result.deleted.get("firings", 0)
            if not result.deleted.get("firings"):
                break
            began = offset(t0)
            time.sleep(slot)
            run.quiet.append((began, offset(t0)))

    return prune


def _within(samples: list[tuple[float, float]], slots: list[tuple[float, float]], end: float) -> list[float]:
    return [late for due, late in samples if due <= end and any(a <= due < b for a, b in slots)]


def run_case(
    *,
    run_case: Callable[..., Any],
    config: AutomationConfig,
    n: int,
    old: int,
    duration: int,
    interval: int,
    executor: SkipExecutor,
    out: Callable[[str], Any],
    slot: float = 10.0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The case; returns its table rows and the RESULT figures."""
    out(
        f"retention: dispatch of {n} subscriptions while {old} old firings are pruned, "
        f"{slot:.0f} s pruning and {slot:.0f} s not, in turn"
    )
    insert_s = _insert_old(config, old, out)
    pruning = PruneRun()
    case = run_case("ours", config, n, duration, interval, executor, out, alongside=_pruner(pruning, old, slot))
    _drop_old()
    end = duration - 5.0  # the case measures firings due up to 5 s before its end
    quiet = _within(case.samples or [], pruning.quiet, end)
    busy = _within(case.samples or [], pruning.pruning, end)
    whole = case.row()
    rows: list[dict[str, Any]] = [
        {
            "slots": label,
            "seconds": sum(b - a for a, b in slots),
            "due in them": len(late),
            "lateness p50 ms": common.percentile(late, 50),
            "lateness p99 ms": common.percentile(late, 99),
        }
        for label, slots, late in (("not pruning", pruning.quiet, quiet), ("pruning", pruning.pruning, busy))
    ]
    p99_base, p99_pruning = rows[0]["lateness p99 ms"], rows[1]["lateness p99 ms"]
    prune_s = rows[1]["seconds"]
    out(
        f"  pruner: {pruning.pruned} firings deleted in {prune_s:.1f} s of pruning "
        f"({pruning.pruned / max(prune_s, 1e-9):.0f}/s) over {len(pruning.pruning)} slots; "
        f"the whole case: missed={whole['missed']} duplicated={whole['duplicated']}"
    )
    figures = {
        "n": n,
        "old_firings": old,
        "pruned": pruning.pruned,
        "prune_s": prune_s,
        "insert_s": insert_s,
        "p99_lateness_ms": p99_pruning,
        "baseline_p99_lateness_ms": p99_base,
        "p99_ratio": p99_pruning / p99_base if p99_base else float("nan"),
        "p50_lateness_ms": rows[1]["lateness p50 ms"],
        "baseline_p50_lateness_ms": rows[0]["lateness p50 ms"],
        "samples": len(busy),
        "baseline_samples": len(quiet),
        "missed": whole["missed"],
        "duplicated": whole["duplicated"],
    }
    return rows, figures
