"""Thin tasks of operations: beat's alert evaluation and one alert delivery, and retention."""

from __future__ import annotations

import dataclasses
import uuid

from celery import shared_task
from django.conf import settings

from orchestrator.operations.alerting.delivery import DeliveryFailed, alert_delivery_send
from orchestrator.operations.alerting.evaluation import alerts_evaluate
from orchestrator.operations.retention import retention_prune


# expires: a tick that waited longer than a period in the queue is dropped; the next one runs.
@shared_task(name="operations.alerts_evaluate", ignore_result=True, expires=settings.ALERTS_EVALUATE_SECONDS)
def evaluate_alerts() -> dict[str, int]:
    outcome = alerts_evaluate()
    return dataclasses.asdict(outcome)


# The service bounds the attempts (ALERTS_DELIVERY_MAX_ATTEMPTS, counted in the row, so the
# evaluator's re-enqueue does not reset them); Celery only spaces them out. retry_backoff_max
# stays under ALERTS_DELIVERY_STALE_SECONDS so a delivery waiting for its retry is not re-enqueued.
@shared_task(
    name="operations.alert_deliver",
    ignore_result=True,
    autoretry_for=(DeliveryFailed,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
    acks_late=True,
)
def deliver_alert(delivery_id: str) -> str:
    return alert_delivery_send(delivery_id=uuid.UUID(delivery_id))


# Hourly by default; a tick that waited a whole period is dropped (the next one does the same).
@shared_task(name="operations.retention_prune", ignore_result=True, expires=settings.RETENTION_PRUNE_SECONDS)
def prune_retention() -> dict[str, int]:
    return retention_prune().summary()
