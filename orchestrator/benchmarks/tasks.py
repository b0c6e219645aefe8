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
