"""Thin Celery tasks for the engine: decode ids, call one service, return a small summary."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task

from orchestrator.engine import services
from orchestrator.infra.heartbeats import BEAT, heartbeat


# Acknowledged when the delivery ends, and sent again at once if the pool process running it
# dies: an atomic step's transaction died with it, and nothing else would send it before the
# sweep's stall rule (docs/engine.md, "Dead workers in atomic steps").
@shared_task(
    name="orchestrator.workflow_step", ignore_result=True, bind=True, acks_late=True, reject_on_worker_lost=True
)
def workflow_step(self: Task[Any, Any], run_id: str, index: int) -> str:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    return services.step_execute(run_id=uuid.UUID(run_id), index=index, redelivered=redelivered)


@shared_task(name="orchestrator.workflow_sweep", ignore_result=True, expires=30)
def workflow_sweep() -> dict[str, int]:
    heartbeat(BEAT)  # beat sends this every few seconds: /readyz knows beat is alive
    result = services.workflow_sweep()
    return {"due": result.due, "stalled": result.stalled, "orphaned": result.orphaned}
