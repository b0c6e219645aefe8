"""One INTERVAL dispatch batch in four statements, whatever its size: claim, insert, move on.

Through the ORM a firing cost 1.35 ms (docs/benchmarks.md, "Triggers"): a model instance per
subscription and per firing, Django 5.2's bulk INSERT quoting its UNNEST arrays client-side with
regular expressions, and a bulk update that rebuilt every value. Here the rows go by as tuples:
- claim: one SELECT ... FOR UPDATE OF subscription SKIP LOCKED, the due rows as tuples;
- build: each /kernel/trigger body (wire.trigger_body and wire.subscription_wire, as `firing_new`), its
  requestID, HMAC signature and correlation id, in Python (the HMAC key never leaves it);
- insert: one INSERT ... SELECT FROM unnest(arrays), the arrays bound server-side in binary;
- move on: one UPDATE ... FROM unnest(arrays) of next_run_at and the execution context.

Exactly once is argued in firings.py and unchanged: the rows stay locked until the commit that
also writes their firings and their next due times, and each firing's key (subscription + due
time) is unique: a due time that somehow has a firing already (a next_run_at moved back by
hand) is not fired again (ON CONFLICT DO NOTHING) and only moves on, the rest of the batch fires."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from django.db import connection

from orchestrator.automations.models import (
    ZERO_HASH,
    AutomationConfig,
    Firing,
    FiringStatus,
    SourceType,
    Subscription,
    SubscriptionStatus,
)
from orchestrator.automations.selectors import validator_address
from orchestrator.automations.services.configs import config_hmac_key
from orchestrator.automations.typed_data import hmac_hex
from orchestrator.automations.wire import rfc3339, subscription_wire, trigger_body

logger = logging.getLogger("orchestrator.automations")

SUBSCRIPTIONS = Subscription._meta.db_table
CONFIGS = AutomationConfig._meta.db_table
FIRINGS = Firing._meta.db_table

# The columns firing_new reads, in this order (DueRow).
CLAIM = f"""
SELECT s.id, s.config_id, s.next_run_at, s.execution_count, s.prev_execution_at, s.prev_execution_id,
       s.chain_id, s.sub_account_address, s.module_address, s.status, s.token_inputs::text,
       s.token_limits::text, s.metadata::text, s.fee_token, s.fee_amount, s.commit_hash, s.created_at
FROM {SUBSCRIPTIONS} s JOIN {CONFIGS} c ON c.id = s.config_id
WHERE s.status = %s AND s.next_run_at <= %s AND c.source_type = %s
ORDER BY s.next_run_at
LIMIT %s
FOR UPDATE OF s SKIP LOCKED"""  # noqa: S608 (table names from the models; values are parameters)

# Columns left out take their NULL (response, sent_at, relay_transaction, ...).
_INSERT = f"""
INSERT INTO {FIRINGS} (id, subscription_id, key, request_id, trigger_type, due_at, request, status, reason,
    attempts, next_attempt_at, lease_token, lease_until, output_tx_hash, report_status, correlation_id,
    created_at)
SELECT u.id, u.subscription_id, u.key, u.request_id, %s, u.due_at, u.request::jsonb, %s, '',
    0, GREATEST(u.due_at, %s), %s, %s, %s, '', u.correlation_id, %s
FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::timestamptz[], %b::text[], %b::text[])
    AS u(id, subscription_id, key, request_id, due_at, request, correlation_id)
ON CONFLICT (key) DO NOTHING
RETURNING id"""  # noqa: S608

_MOVE_ON = f"""
UPDATE {SUBSCRIPTIONS} s SET next_run_at = u.next_run_at,
    execution_count = CASE WHEN u.fired THEN u.execution_count ELSE s.execution_count END,
    prev_execution_at = CASE WHEN u.fired THEN %s ELSE s.prev_execution_at END,
    prev_execution_id = CASE WHEN u.fired THEN u.prev_execution_id ELSE s.prev_execution_id END
FROM unnest(%b::uuid[], %b::timestamptz[], %b::bigint[], %b::text[], %b::bool[])
    AS u(id, next_run_at, execution_count, prev_execution_id, fired)
WHERE s.id = u.id"""  # noqa: S608


class DueRow(NamedTuple):
    id: uuid.UUID
    config_id: uuid.UUID
    next_run_at: datetime
    execution_count: int
    prev_execution_at: datetime | None
    prev_execution_id: str
    chain_id: int
    sub_account_address: str
    module_address: str
    status: int
    token_inputs: str  # jsonb, read as text
    token_limits: str
    metadata: str
    fee_token: str
    fee_amount: str
    commit_hash: str
    created_at: datetime


@dataclass(frozen=True)
class ConfigFacts:
    """What a firing's body and signature need from its config, read once per batch."""

    executor_address: str
    executor_id: str
    interval_seconds: int
    hmac_key: str


@dataclass(frozen=True)
class Fired:
    """A batch's firings as written: their ids and due times, for the handoff."""

    ids: list[uuid.UUID]
    due_at: list[datetime]


def _configs(config_ids: set[uuid.UUID]) -> dict[uuid.UUID, ConfigFacts]:
    facts = {}
    for config in AutomationConfig.objects.select_related("executor", "executor_key").filter(pk__in=config_ids):
        facts[config.pk] = ConfigFacts(
            executor_address=config.executor_key.address if config.executor_key else config.executor.address,
            executor_id=str(config.executor.registry_id),
            interval_seconds=config.interval_seconds or 0,
            hmac_key=config_hmac_key(config),
        )
    return facts


def _uuids(n: int) -> list[uuid.UUID]:
    """n random (version 4) UUIDs from one read of the OS's random source, not n."""
    pool = os.urandom(16 * n)
    return [uuid.UUID(bytes=pool[16 * i : 16 * i + 16], version=4) for i in range(n)]


class _Json:
    """Parses each distinct jsonb text once per batch: most rows hold the same few ('{}'). The
    parsed values are only serialized again, never changed, so rows may share them."""

    def __init__(self) -> None:
        self._seen: dict[str, Any] = {}

    def __call__(self, text: str) -> Any:
        if text not in self._seen:
            self._seen[text] = json.loads(text)
        return self._seen[text]


def subscription_body(row: DueRow, config: ConfigFacts, validator: str | None, parse: _Json) -> dict[str, Any]:
    """wire.subscription_json of the claimed row."""
    return subscription_wire(
        id=row.id,
        registry_id=config.executor_id,
        chain_id=row.chain_id,
        sub_account_address=row.sub_account_address,
        status=row.status,
        duration=config.interval_seconds,
        token_inputs=parse(row.token_inputs),
        token_limits=parse(row.token_limits),
        metadata=parse(row.metadata),
        fee_token=row.fee_token,
        fee_amount=row.fee_amount,
        commit_hash=row.commit_hash,
        created_at=row.created_at,
        module_address=row.module_address,
        validator=validator,
    )


def interval_batch_fire(
    *,
    now: datetime,
    horizon: datetime,
    limit: int,
    lease_token: uuid.UUID,
    lease_until: datetime,
    next_due: Callable[[datetime, int, datetime], datetime],
) -> Fired:
    """Claims up to `limit` INTERVAL subscriptions due by `horizon`, writes their firings (handed
    to `lease_token` until `lease_until`) and their next due times (`next_due(due, interval,
    now)`). Call inside a transaction: the claim's row locks hold until it commits."""
    if not connection.in_atomic_block:  # the row locks would go at once, and exactly once with them
        raise RuntimeError("interval_batch_fire must run inside transaction.atomic()")
    raw = connection.connection  # Django's cursor binds client-side; this one binds server-side
    with psycopg.Cursor(raw) as cursor:
        # Binary results: psycopg's C loaders, not Django's Python one for timestamptz.
        cursor.execute(CLAIM, (SubscriptionStatus.ACTIVE.value, horizon, SourceType.INTERVAL.value, limit), binary=True)
        rows = [DueRow(*r) for r in cursor.fetchall()]
        if not rows:
            return Fired([], [])
        configs = _configs({r.config_id for r in rows})
        validator = validator_address() if any(r.module_address for r in rows) else None
        n, parse = len(rows), _Json()
        ids, request_uuids, correlation = _uuids(n), _uuids(n), _uuids(n)
        keys, request_ids, bodies, due_at, next_runs, counts = [], [], [], [], [], []
        for i, row in enumerate(rows):
            config = configs[row.config_id]
            when = row.next_run_at
            data = rfc3339(when)
            request_id = f"{request_uuids[i]}-{when.strftime('%Y-%m-%dT%H:%M:%SZ')}"
            body = trigger_body(
                execution_count=row.execution_count,
                prev_execution_at=row.prev_execution_at,
                prev_execution_id=row.prev_execution_id,
                executor_address=config.executor_address,
                executor_id=config.executor_id,
                sub_account_address=row.sub_account_address,
                chain_id=row.chain_id,
                subscription=subscription_body(row, config, validator, parse),
                request_id=request_id,
                signature=hmac_hex(config.hmac_key, request_id),
                trigger={"type": SourceType.INTERVAL.value, "data": data},
            )
            keys.append(f"{row.id}:interval:{data}")
            request_ids.append(request_id)
            bodies.append(json.dumps(body))
            due_at.append(when)
            next_runs.append(next_due(when, config.interval_seconds or 1, now))
            counts.append(row.execution_count + 1)
        sub_ids = [r.id for r in rows]
        cursor.execute(
            _INSERT,
            (
                SourceType.INTERVAL.value,
                FiringStatus.PENDING.value,
                now,
                lease_token,
                lease_until,
                ZERO_HASH,
                now,
                ids,
                sub_ids,
                keys,
                request_ids,
                due_at,
                bodies,
                [c.hex for c in correlation],
            ),
        )
        inserted = {r[0] for r in cursor.fetchall()}
        fired = [i in inserted for i in ids]
        if len(inserted) < n:
            # Its due time already has a firing (the key is unique): that one stands, and the
            # subscription only moves on to its next due time.
            logger.warning("%d due times already fired; not fired again", n - len(inserted))
        cursor.execute(_MOVE_ON, (now, sub_ids, next_runs, counts, request_ids, fired))
    kept = [i for i, was in enumerate(fired) if was]
    return Fired([ids[i] for i in kept], [due_at[i] for i in kept])
