"""Thin beat tasks for the relayer."""

from __future__ import annotations

from celery import shared_task

from relayer.services.monitor import nonce_gaps_fill


@shared_task(name="relayer.monitor", ignore_result=True, expires=30)
def relayer_monitor() -> dict[str, int]:
    result = nonce_gaps_fill()
    return {"filled": result.filled, "resent": result.resent}
