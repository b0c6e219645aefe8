"""Thin Celery tasks for the engine: decode ids, call one service, return a small summary."""

from __future__ import annotations

import uuid

from celery import shared_task

from orchestrator.engine import services
from orchestrator.infra.heartbeats import BEAT, heartbeat


@shared_task(name="orchestrator.workflow_step", ignore_result=True)
def workflow_step(run_id: str, index: int) -> str:
    return services.step_execute(run_id=uuid.UUID(run_id), index=index)


@shared_task(name="orchestrator.workflow_sweep", ignore_result=True, expires=30)
def workflow_sweep() -> dict[str, int]:
    heartbeat(BEAT)  # beat sends this every few seconds: /readyz knows beat is alive
    result = services.workflow_sweep()
    return {"due": result.due, "stalled": result.stalled, "orphaned": result.orphaned}
