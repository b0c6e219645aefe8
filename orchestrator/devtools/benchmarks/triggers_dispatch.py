"""`bench triggers`' dispatch cost: one dispatcher call that claims, creates and hands off the
firings of `due` subscriptions among `registered` (1,000 among 1,000,000 for the issue).

The subscriptions are registered by one INSERT ... SELECT FROM generate_series (a million in
seconds; through bulk_create it took minutes) and removed by plain DELETEs (the ORM's delete
would load every row to check what protects it). The handoff is real: the delivery messages go
to the broker, to a queue no worker reads, emptied afterwards. With `profile`, the figures are
followed by cProfile's top lines of one more call and EXPLAIN ANALYZE of the claim."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from orchestrator.automations.models import AutomationConfig, Firing, SourceType, Subscription, SubscriptionStatus
from orchestrator.automations.services.firings import intervals_dispatch
from orchestrator.automations.services.interval_batch import CLAIM
from orchestrator.automations.tasks import deliver as deliver_task

# Delivery messages of the measured calls: sent as the dispatcher sends them, never consumed.
DISCARD_QUEUE = "bench-dispatch-discard"
SUBSCRIPTIONS = Subscription._meta.db_table
FIRINGS = Firing._meta.db_table
RUNS = 5


def _deliver(firing_ids: list[str], token: str, eta: datetime | None) -> None:
    options: dict[str, Any] = {"queue": DISCARD_QUEUE} | ({"eta": eta} if eta is not None else {})
    deliver_task.apply_async(args=(firing_ids, token), **options)


def rows_delete(owner_username: str) -> None:
    """Removes the bench user's firings and subscriptions, however many."""
    owner = get_user_model().objects.filter(username=owner_username).values_list("pk", flat=True).first()
    if owner is None:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {FIRINGS} f USING {SUBSCRIPTIONS} s WHERE f.subscription_id = s.id AND s.owner_id = %s",  # noqa: S608
            [owner],
        )
        cursor.execute(f"DELETE FROM {SUBSCRIPTIONS} WHERE owner_id = %s", [owner])  # noqa: S608
        # A million deleted rows would otherwise sit at the head of the due index, where the
        # next size's claim scans, until autovacuum came by.
        cursor.execute(f"VACUUM ANALYZE {FIRINGS}, {SUBSCRIPTIONS}")


def subscriptions_register(*, config: AutomationConfig, owner_id: int, registered: int, due: int) -> None:
    """`registered` subscriptions of `config`: `due` of them due a second ago, the rest in an
    hour. Columns as the ORM would write them (its defaults are Python-side, not in the table)."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {SUBSCRIPTIONS} (id, config_id, chain_id, sub_account_address, module_address,
                token_inputs, token_limits, metadata, fee_token, fee_amount, commit_hash, status, next_run_at,
                execution_count, prev_execution_id, owner_id, created_at)
            SELECT gen_random_uuid(), %s, 31337, '0x' || lpad(to_hex(i), 40, '0'), '', '{{}}', '{{}}', '{{}}', '',
                '0', '', %s, CASE WHEN i <= %s THEN %s ELSE %s END, 0, '', %s, %s
            FROM generate_series(1, %s) AS i""",  # noqa: S608
            [
                config.pk,
                SubscriptionStatus.ACTIVE.value,
                due,
                now - timedelta(seconds=1),
                now + timedelta(hours=1),
                owner_id,
                now,
                registered,
            ],
        )
        cursor.execute(f"VACUUM ANALYZE {SUBSCRIPTIONS}")
    # Due a second before the measured call, not before the insert began (a million rows take
    # half a minute: the catch-up rule would fire their next due time within the same call).
    _due_again(config, due)


def _due_again(config: AutomationConfig, due: int) -> None:
    """The `due` earliest subscriptions due again (a second ago: a due time not fired yet)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {SUBSCRIPTIONS} SET next_run_at = %s WHERE id IN (
                SELECT id FROM {SUBSCRIPTIONS} WHERE config_id = %s AND status = %s
                ORDER BY next_run_at LIMIT %s)""",  # noqa: S608
            [timezone.now() - timedelta(seconds=1), config.pk, SubscriptionStatus.ACTIVE.value, due],
        )


def _one_call(due: int) -> tuple[float, float]:
    """Wall and this process's CPU milliseconds of one call (the CPU time does not count waiting
    on PostgreSQL and the broker, nor other processes sharing the machine)."""
    began, cpu = time.perf_counter(), time.process_time()
    fired = intervals_dispatch(deliver=_deliver)
    elapsed, cpu = (time.perf_counter() - began) * 1000, (time.process_time() - cpu) * 1000
    assert fired == due, f"dispatched {fired}, expected {due}"
    return elapsed, cpu


def dispatch_cost(
    *,
    config: AutomationConfig,
    owner_username: str,
    registered: int,
    due: int,
    profile: bool,
    out: Callable[[str], Any],
) -> float:
    """The median milliseconds of RUNS calls, each firing `due` among `registered`."""
    rows_delete(owner_username)
    owner_id = get_user_model().objects.get(username=owner_username).pk
    began = time.perf_counter()
    subscriptions_register(config=config, owner_id=owner_id, registered=registered, due=due)
    out(f"  registered {registered:,} ({due:,} due) in {time.perf_counter() - began:.1f} s")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        runs = []
        for run in range(RUNS):
            if run:
                _due_again(config, due)
            runs.append(_one_call(due))
        out(
            f"  {registered:,} registered, {due:,} due: "
            + ", ".join(f"{ms:.0f} ({cpu:.0f} CPU)" for ms, cpu in runs)
            + " ms"
        )
        if profile:
            _profile(config, due, out)
    finally:
        broker.delete(DISCARD_QUEUE)
    return statistics.median(ms for ms, _ in runs)


def _profile(config: AutomationConfig, due: int, out: Callable[[str], Any]) -> None:
    _due_again(config, due)
    with transaction.atomic(), connection.cursor() as cursor:
        horizon = timezone.now() + timedelta(seconds=settings.AUTOMATION_LOOKAHEAD_SECONDS)
        params: tuple[int, datetime, str, int] = (
            SubscriptionStatus.ACTIVE.value,
            horizon,
            SourceType.INTERVAL.value,
            settings.AUTOMATION_DISPATCH_BATCH,
        )
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + CLAIM, params)
        out("  EXPLAIN ANALYZE of the claim:")
        for (line,) in cursor.fetchall():
            out(f"    {line}")
        transaction.set_rollback(True)
    profiler = cProfile.Profile()
    profiler.enable()
    elapsed, _ = _one_call(due)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    out(f"  cProfile of one call ({elapsed:.0f} ms with the profiler on), by cumulative time:")
    for line in text.getvalue().splitlines():
        if line.strip():
            out(f"    {line}")
