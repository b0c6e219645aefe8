"""Runs in a known state for tests that operate on them (commands, admin)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone

from orchestrator.engine.models import Phase, StepKind, StepRun, StepStatus, WorkflowRun, WorkflowTransition
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


def make_run(phase: str, **fields: Any) -> WorkflowRun:
    values: dict[str, Any] = {
        "kind": "test.effects",
        "idempotency_key": f"key-{uuid.uuid4()}",
        "correlation_id": uuid.uuid4().hex,
        "phase": phase,
        "step_name": "charge",
        "current_step": 2,
    }
    run = WorkflowRun.objects.create(**{**values, **fields})
    WorkflowTransition.objects.create(
        run=run,
        from_phase="",
        to_phase=Phase.SUBMITTING,
        step_name="reserve",
        reason="started",
        actor="engine",
        correlation_id=run.correlation_id,
    )
    if phase != Phase.SUBMITTING:
        WorkflowTransition.objects.create(
            run=run,
            from_phase=Phase.SUBMITTING,
            to_phase=phase,
            step_name="charge",
            reason=f"moved to {phase} by the test",
            actor="engine",
            correlation_id=run.correlation_id,
        )
    started = timezone.now() - timedelta(seconds=1)
    StepRun.objects.create(
        run=run,
        index=0,
        name="reserve",
        kind=StepKind.FORWARD,
        attempt=1,
        status=StepStatus.DONE,
        output={"reservation": "r-17"},
        started_at=started,
        finished_at=started + timedelta(milliseconds=12),
    )
    StepRun.objects.create(
        run=run,
        index=2,
        name="charge",
        kind=StepKind.FORWARD,
        attempt=1,
        status=StepStatus.FAILED,
        error="card processor unreachable",
        started_at=started,
        finished_at=started + timedelta(milliseconds=30),
    )
    return run
