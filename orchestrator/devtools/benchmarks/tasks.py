"""Bare Celery tasks: the baseline the engine benchmark compares against."""

from __future__ import annotations

import time

import redis
from celery import shared_task
from django.conf import settings

DONE_KEY = "bench:bare:done"


@shared_task(name="bench.noop", ignore_result=True)
def bench_noop(key: str) -> None:
    return None


@shared_task(name="bench.done", ignore_result=True)
def bench_done(key: str) -> None:
    # The chain's last link records when it finished, as the engine records finished_at.
    redis.Redis.from_url(settings.CELERY_BROKER_URL).rpush(DONE_KEY, f"{key} {time.time()}")


BASELINE_DUPLICATES_KEY = "bench:triggers:duplicates"


@shared_task(name="bench.trigger_fire", ignore_result=True)
def bench_trigger_fire(sub_id: str, start: float, interval: int) -> None:
    """The `bench triggers` baseline: django-celery-beat runs this once per subscription per
    interval (one PeriodicTask each); it fires that one subscription through the same firing and
    delivery code the dispatcher uses. Its due time is the latest one on the subscription's grid."""
    from datetime import UTC, datetime

    from django.db import IntegrityError, transaction
    from django.utils import timezone

    from orchestrator.automations.models import SourceType, Subscription
    from orchestrator.automations.services.configs import config_hmac_key
    from orchestrator.automations.services.delivery import firings_deliver
    from orchestrator.automations.services.firings import firing_new, handoff_prepare
    from orchestrator.automations.wire import rfc3339

    now = timezone.now()
    due = datetime.fromtimestamp(start + max((now.timestamp() - start) // interval, 0) * interval, tz=UTC)
    try:
        with transaction.atomic():
            sub = (
                Subscription.objects.select_for_update(of=("self",))
                .select_related("config__executor", "config__executor_key")
                .get(pk=sub_id)
            )
            firing = firing_new(
                subscription=sub,
                trigger_type=SourceType.INTERVAL,
                trigger_data=rfc3339(due),
                key=f"{sub.pk}:interval:{rfc3339(due)}",
                due_at=due,
                hmac_key=config_hmac_key(sub.config),
                now=now,
            )
            handoff = handoff_prepare([firing], now)
            firing.save(force_insert=True)
            sub.save(update_fields=["execution_count", "prev_execution_at", "prev_execution_id"])
    except IntegrityError:  # beat ran it twice for one due time
        redis.Redis.from_url(settings.CELERY_BROKER_URL).incr(BASELINE_DUPLICATES_KEY)
        return
    firings_deliver(firing_ids=[firing_id for firing_id, _ in handoff.due], token=handoff.token)
