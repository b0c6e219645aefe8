"""Turning the rules' conditions into alerts, and each alert's transitions into deliveries.

Invariants:
- One firing alert per (rule, key): the partial unique index `one_firing_alert_per_key`. The
  evaluator whose INSERT commits opens the alert and creates its firing deliveries in the same
  transaction; a concurrent evaluator's INSERT fails and it does nothing more for that key.
- A firing alert is resolved by a conditional UPDATE (state firing -> resolved); only the
  evaluator whose UPDATE changed the row creates the resolved deliveries, in that transaction.
- Deliveries are enqueued after their transaction commits, so a worker never looks for a row
  that is not there; a pending delivery whose message was lost (a worker killed, the broker
  restarted) is enqueued again by `deliveries_requeue_stale`, which every evaluation runs.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator.celery import app as celery_app
from orchestrator.operations.alerting.rules import Condition, RuleResult, rules_evaluate
from orchestrator.operations.models import (
    Alert,
    AlertDelivery,
    AlertState,
    DeliveryEvent,
    DeliveryStatus,
    NotificationChannel,
)

logger = logging.getLogger("orchestrator.operations.alerts")

DELIVER_TASK = "operations.alert_deliver"
DELIVERY_QUEUE = "workflows"
REQUEUE_BATCH = 500


@dataclass
class Evaluation:
    fired: int = 0
    resolved: int = 0
    firing: int = 0
    requeued: int = 0


def alerts_evaluate(*, now: datetime | None = None) -> Evaluation:
    """Evaluates every rule once: opens the alerts of new conditions, refreshes the ones still
    seen, resolves the ones gone, and enqueues again deliveries a dead worker left pending."""
    now = now or timezone.now()
    outcome = Evaluation()
    for rule, result in rules_evaluate(now).items():
        if result is not None:
            alerts_apply(rule=rule, result=result, now=now, outcome=outcome)
    outcome.requeued = deliveries_requeue_stale(now=now)
    return outcome


def alerts_apply(*, rule: str, result: RuleResult, now: datetime, outcome: Evaluation | None = None) -> Evaluation:
    """Brings the rule's firing alerts in line with its conditions."""
    outcome = outcome or Evaluation()
    firing = {a.key: a for a in Alert.objects.filter(rule=rule, state=AlertState.FIRING)}
    seen: set[str] = set()
    still: list[int] = []
    for condition in result.conditions:
        if condition.key in seen:
            continue
        seen.add(condition.key)
        alert = firing.get(condition.key)
        if alert is None:
            outcome.fired += alert_fire(condition=condition, now=now)
        elif (alert.summary, alert.link) != (condition.summary, condition.link):
            # A new count or balance: the alert says so, nobody is told again.
            Alert.objects.filter(pk=alert.pk, state=AlertState.FIRING).update(
                summary=condition.summary, link=condition.link, last_seen_at=now
            )
        else:
            still.append(alert.pk)
    Alert.objects.filter(pk__in=still, state=AlertState.FIRING).update(last_seen_at=now)
    for key, alert in firing.items():
        if key not in seen and not _undecided(key, result.undecided):
            outcome.resolved += alert_resolve(alert=alert, now=now)
    outcome.firing += len(seen)
    return outcome


def _undecided(key: str, undecided: set[str]) -> bool:
    # "31337:" stands for every subject on chain 31337.
    return key in undecided or any(u.endswith(":") and key.startswith(u) for u in undecided)


def alert_fire(*, condition: Condition, now: datetime) -> bool:
    """Opens the alert and its firing deliveries, one per enabled channel that wants the rule.
    False if another evaluator has just opened it."""
    channels = [c for c in NotificationChannel.objects.filter(enabled=True) if c.wants(condition.rule)]
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=condition.rule,
                key=condition.key,
                summary=condition.summary,
                link=condition.link,
                started_at=now,
                last_seen_at=now,
            )
            deliveries = AlertDelivery.objects.bulk_create(
                [AlertDelivery(alert=alert, channel=c, event=DeliveryEvent.FIRING) for c in channels]
            )
            _enqueue_on_commit([d.id for d in deliveries])
    except IntegrityError:
        return False
    logger.warning("alert firing %s:%s: %s", condition.rule, condition.key, condition.summary)
    return True


def alert_resolve(*, alert: Alert, now: datetime) -> bool:
    """Resolves a firing alert and tells the channels that were told it fired (those still
    enabled). False if it was no longer firing."""
    with transaction.atomic():
        changed = Alert.objects.filter(pk=alert.pk, state=AlertState.FIRING).update(
            state=AlertState.RESOLVED, resolved_at=now
        )
        if not changed:
            return False
        told = NotificationChannel.objects.filter(
            enabled=True, deliveries__alert=alert, deliveries__event=DeliveryEvent.FIRING
        ).distinct()
        deliveries = AlertDelivery.objects.bulk_create(
            [AlertDelivery(alert=alert, channel=c, event=DeliveryEvent.RESOLVED) for c in told]
        )
        _enqueue_on_commit([d.id for d in deliveries])
    logger.warning("alert resolved %s:%s", alert.rule, alert.key)
    return True


def deliveries_requeue_stale(*, now: datetime | None = None) -> int:
    """Enqueues again the pending deliveries that nobody holds and nobody has tried for
    ALERTS_DELIVERY_STALE_SECONDS: their message went down with a worker. Longer than the
    task's longest retry backoff, so a delivery that is only waiting for its retry is left
    alone; if both run all the same, the lease and the status let only one send."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.ALERTS_DELIVERY_STALE_SECONDS)
    ids = list(
        AlertDelivery.objects.filter(status=DeliveryStatus.PENDING, created_at__lt=stale)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .filter(Q(last_attempt_at__isnull=True) | Q(last_attempt_at__lt=stale))
        .order_by("created_at")
        .values_list("id", flat=True)[:REQUEUE_BATCH]
    )
    for delivery_id in ids:
        _send(delivery_id)
    if ids:
        logger.warning("alerts: %d pending deliveries enqueued again", len(ids))
    return len(ids)


def delivery_enqueue(delivery_id: uuid.UUID) -> None:
    """Enqueues one delivery after the current transaction commits (at once outside one)."""
    _enqueue_on_commit([delivery_id])


def _enqueue_on_commit(ids: list[uuid.UUID]) -> None:
    def send_all() -> None:
        for delivery_id in ids:
            _send(delivery_id)

    if ids:
        transaction.on_commit(send_all)


def _send(delivery_id: uuid.UUID) -> None:
    celery_app.send_task(DELIVER_TASK, args=[str(delivery_id)], queue=DELIVERY_QUEUE)
