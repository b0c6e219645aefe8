"""`bench logs`' table: one subscription with a long execution log and many with shorter ones.

The firings are written by INSERT ... SELECT from generate_series, one window of time per
statement, the big subscription's rows and the others' of that window sorted by created_at
together, so the heap interleaves them as a live table would (a page's rows are not neighbours
on disk just because the bench wrote them so). The big subscription fires every second, two
firings to a timestamp (ties that only the id orders); the others' firings are spread evenly
over the same span. Each carries a /kernel/trigger body and a skip answer of the usual size.
Then VACUUM ANALYZE, as an old table would be (autovacuum's work in production). A fill that
matches the sizes asked for is kept between runs with --keep and used again, vacuumed again
first."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from eth_account import Account

from orchestrator.automations.models import ZERO_HASH, AutomationConfig, Firing, Subscription
from orchestrator.automations.services.configs import config_create, executor_register
from orchestrator.automations.typed_data import hmac_hex, kernel_action_sign
from orchestrator.automations.wire import subscription_json
from orchestrator.infra.tokens import api_token_issue

BENCH_USER = "bench-logs"
WINDOW = 50_000  # seconds of the big subscription's log per INSERT (about 100,000 rows)
INSERT = """
INSERT INTO automations_firing (
    id, subscription_id, key, request_id, trigger_type, due_at, request, response, status, reason,
    attempts, output_tx_hash, report_status, correlation_id, created_at, sent_at, answered_at, hook_ms
)
SELECT gen_random_uuid(), sub, 'bench-logs:' || rid, rid, 'INTERVAL', t,
       jsonb_set(jsonb_set(%(request)s::jsonb, '{requestID}', to_jsonb(rid)), '{context,executionCount}', to_jsonb(n)),
       jsonb_set(%(response)s::jsonb, '{requestID}', to_jsonb(rid)),
       'skipped', '', 1, %(zero)s, 'delivered', md5(rid), t, t, t, 12
FROM (
    SELECT %(big)s::uuid AS sub, g AS n, 'bl-' || g AS rid, %(t0)s + (g / 2) * interval '2 seconds' AS t
    FROM generate_series(%(g0)s::bigint, %(g1)s::bigint) g
    UNION ALL
    SELECT (%(others)s::uuid[])[(1 + h %% %(n_others)s::bigint)::int], h / %(n_others)s::bigint, 'bl-o' || h,
           %(t0)s + (h * %(span)s::bigint / %(n_rest)s::bigint) * interval '1 second'
    FROM generate_series(%(h0)s::bigint, %(h1)s::bigint) h
) r
ORDER BY t
"""


@dataclass
class Fill:
    big: Subscription
    others: list[Subscription]
    token: str
    seconds: float  # 0.0: an earlier run's fill, used again


def _config() -> AutomationConfig:
    owner, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    AutomationConfig.objects.filter(executor__owner=owner, status="active").update(status="deleted")
    account = Account.create()
    executor = executor_register(owner=owner, address=account.address, name="bench logs executor", metadata={})
    base_url = "http://127.0.0.1:9"  # never called: nothing here fires
    signature = kernel_action_sign(account, destination_url=base_url, verify_payload=True, action="CREATE")
    return config_create(
        executor=executor,
        source_type="INTERVAL",
        source_value=30,
        base_url=base_url,
        verify_payload=True,
        relayer_count=1,
        autosign=False,
        signature=signature,
    ).config


def clean() -> None:
    subs = list(Subscription.objects.filter(owner__username=BENCH_USER).values_list("pk", flat=True))
    if subs:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM automations_firing WHERE subscription_id = ANY(%s)", [subs])
        Subscription.objects.filter(pk__in=subs).delete()


def _kept(big: int, others: int, per_other: int) -> tuple[Subscription, list[Subscription]] | None:
    subs = list(Subscription.objects.filter(owner__username=BENCH_USER).order_by("sub_account_address"))
    if len(subs) != others + 1 or subs[0].metadata.get("bench_firings") != big:
        return None
    if any(s.metadata.get("bench_firings") != per_other for s in subs[1:]):
        return None
    return subs[0], subs[1:]


def _bodies(sub: Subscription) -> tuple[str, str]:
    """A /kernel/trigger body and a skip answer as firing_new and an executor make them."""
    request = {
        "context": {"executionCount": 0, "prevExecutionAt": "2026-01-01T00:00:00Z", "prevExecutionID": "bl-0"},
        "params": {
            "executorAddress": sub.config.executor.address,
            "subAccountAddress": sub.sub_account_address,
            "executorID": str(sub.config.executor.registry_id),
            "chainID": sub.chain_id,
            "subscription": subscription_json(sub),
        },
        "requestID": "",
        "signature": hmac_hex("k" * 64, "bl-0"),
        "trigger": {"type": "INTERVAL", "data": "30"},
    }
    response = {"skip": True, "requestID": "", "task": None, "signature": hmac_hex("k" * 64, "bl-0:0x")}
    return json.dumps(request), json.dumps(response)


def fill(*, big: int, others: int, per_other: int, out: Callable[[str], Any]) -> Fill:
    owner, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    token = api_token_issue(user=owner)
    kept = _kept(big, others, per_other)
    if kept is not None:
        # What autovacuum does for a live table: the visibility map says all-visible again (the
        # keyset walk stays index-only) after whatever an earlier run or a test left. Quick when
        # nothing changed: all-visible pages are skipped.
        began = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE automations_firing")
        out(
            f"  the kept fill of an earlier run: {big} + {others} x {per_other} firings "
            f"(VACUUM ANALYZE {time.perf_counter() - began:.1f} s)"
        )
        return Fill(big=kept[0], others=kept[1], token=token, seconds=0.0)
    clean()
    config = _config()
    subs = Subscription.objects.bulk_create(
        [
            Subscription(
                config=config,
                owner=owner,
                chain_id=31337,
                sub_account_address=f"0x{i + 1:040x}",
                metadata={"bench_firings": big if i == 0 else per_other},
            )
            for i in range(others + 1)
        ]
    )
    subs = list(Subscription.objects.select_related("config__executor").filter(pk__in=[s.pk for s in subs]))
    subs.sort(key=lambda s: s.sub_account_address)
    request, response = _bodies(subs[0])
    n_rest = others * per_other
    span = big  # seconds: the big subscription fires once a second
    t0 = timezone.now() - timedelta(seconds=span + 60)
    params: dict[str, Any] = {
        "request": request,
        "response": response,
        "zero": ZERO_HASH,
        "big": subs[0].pk,
        "others": [s.pk for s in subs[1:]],
        "n_others": max(others, 1),
        "span": span,
        "n_rest": max(n_rest, 1),
        "t0": t0,
    }
    began = time.perf_counter()
    with connection.cursor() as cursor:
        for s0 in range(0, span, WINDOW):
            s1 = min(s0 + WINDOW, span)
            # the others' rows h with h * span // n_rest in [s0, s1)
            h0, h1 = -(-s0 * n_rest // span), -(-s1 * n_rest // span) - 1
            cursor.execute(INSERT, params | {"g0": s0, "g1": s1 - 1, "h0": h0, "h1": h1 if n_rest else -1})
        cursor.execute("VACUUM ANALYZE automations_firing")
    seconds = time.perf_counter() - began
    total = Firing.objects.filter(subscription__owner=owner).count()
    assert total == big + n_rest, f"inserted {total}, expected {big + n_rest}"
    out(f"  {total} firings inserted and vacuumed in {seconds:.1f} s")
    return Fill(big=subs[0], others=subs[1:], token=token, seconds=seconds)


def table_size() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(pg_table_size('automations_firing')), "
            "pg_size_pretty(pg_relation_size('firing_log_idx'))"
        )
        heap, index = cursor.fetchone()
    return f"automations_firing {heap}, firing_log_idx {index} (DB {settings.DATABASES['default']['NAME']})"
