"""`bench triggers`, the retention case: INTERVAL dispatch lateness while retention prunes a
million old firings, against the same dispatch on the same table without pruning, back to back.

The old firings (1,000,000 by default, `--prune-old`) are older than RETENTION_FIRINGS_DAYS and
final (skipped), of a cancelled subscription of their own; one INSERT ... SELECT from
generate_series per 100,000 writes them, then VACUUM ANALYZE, as an old table would be. Then the
`ours` case of bench triggers runs twice with the same subscriptions and duration: first with the
old rows in place and nothing pruning ("no pruning"), then with retention_prune (its settings'
batch and pause) running from the first due time until it has deleted them ("pruning"). Both are
compared over the firings due while the pruner ran, at the same offsets from the first due time."""

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
    began: float = 0.0  # seconds after the first due time
    ended: float = 0.0
    pruned: int = 0
    logs: list[str] = field(default_factory=list)


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


def _pruner(run: PruneRun, n: int) -> Callable[[datetime, datetime], None]:
    def prune(t0: datetime, end: datetime) -> None:
        run.began = (timezone.now() - t0).total_seconds()
        # One run for the whole backlog: the beat task's caps would spread it over hours.
        result = retention_prune(max_rows=n + 1, max_seconds=3600)
        run.ended = (timezone.now() - t0).total_seconds()
        run.pruned = result.deleted.get("firings", 0)

    return prune


def _window(samples: list[tuple[float, float]], began: float, ended: float) -> list[float]:
    return [late for due, late in samples if began <= due <= ended]


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
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both cases; returns their table rows and the RESULT figures."""
    out(f"retention: dispatch of {n} subscriptions with {old} old firings in the table, without then with pruning")
    insert_s = _insert_old(config, old, out)
    quiet = run_case("ours", config, n, duration, interval, executor, out)
    pruning = PruneRun()
    busy = run_case("ours", config, n, duration, interval, executor, out, alongside=_pruner(pruning, old))
    _drop_old()
    end = duration - 5.0  # the cases measure firings due up to 5 s before their end
    began, ended = pruning.began, min(pruning.ended, end)
    base = _window(quiet.samples or [], began, ended)
    pruned = _window(busy.samples or [], began, ended)
    rows = []
    for label, case, late in (("no pruning", quiet, base), ("pruning", busy, pruned)):
        row = case.row()
        rows.append(
            {
                "case": label,
                "subscriptions": n,
                "due in window": len(late),
                "lateness p50 ms": common.percentile(late, 50),
                "lateness p99 ms": common.percentile(late, 99),
                "missed": row["missed"],
                "duplicated": row["duplicated"],
            }
        )
    p99_base, p99_pruning = rows[0]["lateness p99 ms"], rows[1]["lateness p99 ms"]
    prune_s = pruning.ended - pruning.began
    out(
        f"  pruner: {pruning.pruned} firings deleted in {prune_s:.1f} s ({pruning.pruned / max(prune_s, 1e-9):.0f}/s); "
        f"window compared: {began:.1f} s to {ended:.1f} s after the first due time"
    )
    figures = {
        "n": n,
        "old_firings": old,
        "pruned": pruning.pruned,
        "prune_s": prune_s,
        "insert_s": insert_s,
        "window_s": ended - began,
        "p99_lateness_ms": p99_pruning,
        "baseline_p99_lateness_ms": p99_base,
        "p99_ratio": p99_pruning / p99_base if p99_base else float("nan"),
        "p50_lateness_ms": rows[1]["lateness p50 ms"],
        "baseline_p50_lateness_ms": rows[0]["lateness p50 ms"],
        "missed": rows[1]["missed"],
        "duplicated": rows[1]["duplicated"],
    }
    return rows, figures
