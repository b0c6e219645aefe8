"""Thin tasks for the relayer: the lane kick, and beat's monitor."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from relayer.services.batches import relay_batches_orphaned, relay_lane_run
from relayer.services.lanes import LANE_TASK
from relayer.services.monitor import nonce_gaps_fill


@shared_task(name=LANE_TASK, ignore_result=True)
def relayer_lane(chain_id: int) -> dict[str, str | None]:
    run = relay_lane_run(chain_id=chain_id)
    return {"batch": str(run.id) if run else None}


@shared_task(name="relayer.monitor", ignore_result=True, expires=30)
def relayer_monitor() -> dict[str, int]:
    result = nonce_gaps_fill()
    kicked = relay_batches_orphaned(older_than=settings.RELAYER_ORPHAN_SECONDS)
    return {"filled": result.filled, "resent": result.resent, "lanes_kicked": kicked}
