"""Firing triggers: due INTERVAL subscriptions claimed in batches, each firing created once.

Catch-up rule (docs/automations.md, "How a firing goes"): a subscription fires at its due times, created_at +
k * interval. If the system was down across several due times, it fires once, for the
earliest missed one, and its next due time is the first one still in the future: missed
windows are not replayed one by one, and the cadence keeps its phase.

Exactly once: the dispatcher locks due subscription rows (SKIP LOCKED, so two beats share the
work instead of waiting), creates their firings and moves next_run_at in one transaction. Each
firing has a unique key (subscription + due time); a second beat or a retried dispatch that
somehow raced would meet the constraint and fire nothing for that due time, never twice
(interval_batch.py: the dispatch batch in four statements). A dispatcher killed mid-batch rolls
back: its rows are unlocked, their next_run_at unchanged, and the next tick fires them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orchestrator.automations.models import AutomationConfig, Firing, Subscription
from orchestrator.automations.services.configs import config_hmac_key
from orchestrator.automations.services.interval_batch import interval_batch_fire
from orchestrator.automations.typed_data import hmac_hex
from orchestrator.automations.wire import subscription_json, trigger_body
from orchestrator.infra.observability import new_correlation_id

logger = logging.getLogger("orchestrator.automations")

# Set by the tasks module: enqueues one delivery task for (firing ids, handoff token), to run at
# the given time (None: at once).
Deliver = Callable[[list[str], str, datetime | None], None]
# Firings due within this span of each other go out in one delivery.
DELIVERY_WINDOW = timedelta(milliseconds=100)


def next_due(due: datetime, interval: int, now: datetime) -> datetime:
    """The first due time after `now` on the subscription's cadence (the catch-up rule)."""
    step = timedelta(seconds=interval)
    missed = max(int((now - due) / step), 0)
    return due + step * (missed + 1)


def request_id_new(due: datetime) -> str:
    """Unique per firing: <uuid>-<due time>."""
    return f"{uuid.uuid4()}-{due.strftime('%Y-%m-%dT%H:%M:%SZ')}"


class HmacKeys:
    """Opens each config's sealed HMAC key once per batch."""

    def __init__(self) -> None:
        self._keys: dict[uuid.UUID, str] = {}

    def __call__(self, config: AutomationConfig) -> str:
        if config.pk not in self._keys:
            self._keys[config.pk] = config_hmac_key(config)
        return self._keys[config.pk]


def firing_new(
    *,
    subscription: Subscription,
    trigger_type: str,
    trigger_data: str | dict[str, Any],
    key: str,
    due_at: datetime,
    hmac_key: str,
    now: datetime,
) -> Firing:
    """A firing with the exact /kernel/trigger body (docs/api.md), and the subscription's context
    moved on: the caller saves both in one transaction."""
    config = subscription.config
    request_id = request_id_new(due_at)
    body = trigger_body(
        execution_count=subscription.execution_count,
        prev_execution_at=subscription.prev_execution_at,
        prev_execution_id=subscription.prev_execution_id,
        executor_address=config.executor_key.address if config.executor_key else config.executor.address,
        executor_id=str(config.executor.registry_id),
        sub_account_address=subscription.sub_account_address,
        chain_id=subscription.chain_id,
        subscription=subscription_json(subscription),
        request_id=request_id,
        signature=hmac_hex(hmac_key, request_id),
        trigger={"type": trigger_type, "data": trigger_data},
    )
    subscription.execution_count += 1
    subscription.prev_execution_at, subscription.prev_execution_id = now, request_id
    return Firing(
        subscription=subscription,
        key=key,
        request_id=request_id,
        trigger_type=trigger_type,
        due_at=due_at,
        request=body,
        next_attempt_at=max(due_at, now),
        correlation_id=new_correlation_id(),
        created_at=now,
    )


@dataclass
class Handoff:
    """Firings created or re-handed in one transaction, for delivery after it commits."""

    token: str
    due: list[tuple[str, datetime]]  # (firing id, when it may be sent)


def handoff_prepare(firings: Iterable[Firing], now: datetime) -> Handoff:
    token = str(uuid.uuid4())
    due = []
    for firing in firings:
        firing.lease_token, firing.lease_until = uuid.UUID(token), _handoff_until(now)
        due.append((str(firing.id), max(firing.due_at, now)))
    return Handoff(token, due)


def _handoff_until(now: datetime) -> datetime:
    """A firing handed to a delivery task is that task's until then; after it the sweep may hand
    it to another (the message was lost, or its worker died before taking it)."""
    return now + timedelta(seconds=settings.AUTOMATION_DELIVERY_LEASE_SECONDS + settings.AUTOMATION_LOOKAHEAD_SECONDS)


def delivery_chunks(
    due: list[tuple[str, datetime]], *, size: int, window: timedelta
) -> list[tuple[list[str], datetime]]:
    """Firings due close together (within `window`), at most `size` per chunk, each with the
    time its last one is due: a delivery sends nothing before its firings are due."""
    chunks: list[tuple[list[str], datetime]] = []
    first: datetime | None = None
    for firing_id, when in sorted(due, key=lambda item: item[1]):
        if first is None or len(chunks[-1][0]) >= size or when - first > window:
            chunks.append(([], when))
            first = when
        chunks[-1][0].append(firing_id)
        chunks[-1] = (chunks[-1][0], when)
    return chunks


def deliver_after_commit(handoff: Handoff, deliver: Deliver) -> None:
    def enqueue() -> None:
        now = timezone.now()
        for ids, send_at in delivery_chunks(
            handoff.due, size=settings.AUTOMATION_DELIVERY_BATCH, window=DELIVERY_WINDOW
        ):
            deliver(ids, handoff.token, send_at if send_at > now else None)

    if handoff.due:
        transaction.on_commit(enqueue)


def intervals_dispatch(*, deliver: Deliver, now: datetime | None = None, max_batches: int = 100) -> int:
    """Fires every INTERVAL subscription due by `now` plus the lookahead, a batch per
    transaction; their deliveries are scheduled for their due times. Returns how many."""
    fired = 0
    for _ in range(max_batches):
        count = _dispatch_batch(deliver=deliver, now=now or timezone.now())
        fired += count
        if count < settings.AUTOMATION_DISPATCH_BATCH:
            break
    return fired


def _dispatch_batch(*, deliver: Deliver, now: datetime) -> int:
    # Claimed a little ahead and sent when due: a firing is not late by the beat tick's period.
    horizon = now + timedelta(seconds=settings.AUTOMATION_LOOKAHEAD_SECONDS)
    token = uuid.uuid4()
    with transaction.atomic():
        # Tuples and arrays, not model instances: four statements a batch (interval_batch.py).
        fired = interval_batch_fire(
            now=now,
            horizon=horizon,
            limit=settings.AUTOMATION_DISPATCH_BATCH,
            lease_token=token,
            lease_until=_handoff_until(now),
            next_due=next_due,
        )
        if not fired.ids:
            return 0
        handoff = Handoff(
            str(token), [(str(i), max(when, now)) for i, when in zip(fired.ids, fired.due_at, strict=True)]
        )
        deliver_after_commit(handoff, deliver)
    logger.info("fired %d interval subscriptions", len(fired.ids))
    return len(fired.ids)


def firings_handoff_stale(*, deliver: Deliver, now: datetime | None = None, limit: int = 1000) -> int:
    """Hands firings whose hook is still to be sent, and that no worker holds (their lease ran
    out, or their retry is due), to a new delivery task. Returns how many."""
    now = now or timezone.now()
    with transaction.atomic():
        stale = list(
            Firing.objects.select_for_update(skip_locked=True)
            .filter(next_attempt_at__isnull=False, next_attempt_at__lte=now, lease_until__lt=now)
            .order_by("lease_until")
            .only("id", "due_at")[:limit]
        )
        if not stale:
            return 0
        handoff = handoff_prepare(stale, now)
        Firing.objects.filter(pk__in=[f.pk for f in stale]).update(
            lease_token=uuid.UUID(handoff.token), lease_until=_handoff_until(now)
        )
        deliver_after_commit(handoff, deliver)
    logger.info("handed %d undelivered firings to delivery again", len(stale))
    return len(stale)
