"""Runs in a known state for tests that operate on them (commands, admin)."""

from __future__ import annotations

import uuid

from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_start
from tests.conftest import wait_until


def reach(run_id: uuid.UUID, *phases: str, timeout: float = 30.0) -> WorkflowRun:
    """Waits until the run is in one of `phases` (completed by default) and returns it."""
    wanted = phases or (Phase.COMPLETED,)
    return wait_until(
        lambda: WorkflowRun.objects.filter(pk=run_id, phase__in=wanted).first(),
        timeout=timeout,
        message=f"run {run_id} to reach {wanted} (now {WorkflowRun.objects.get(pk=run_id).phase})",
    )


def dead_lettered_run() -> WorkflowRun:
    """A `test.effects` run that exhausted its retries at `charge` on a real worker.

    Its root cause is fixed by `control.signal(f"release:{run.id}")`; until then a replay
    dead-letters it again."""
    run, _ = workflow_start(kind="test.effects", input={"until_released": "charge"})
    return reach(run.id, Phase.DEAD_LETTER)
