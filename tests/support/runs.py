"""Runs in a known state for tests that operate on them (commands, admin)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone

from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from orchestrator.engine.services import workflow_start
from tests.conftest import wait_until
from tests.factories import StepRunFactory, WorkflowRunFactory, WorkflowTransitionFactory


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
    """A `test.effects` run in `phase` that failed at `charge` (attempt 1 of step 2), with its
    journal: started, then moved to `phase` unless that is submitting. `fields` override the run's."""
    run = WorkflowRunFactory.create(**{"phase": phase, "step_name": "charge", "current_step": 2, **fields})
    WorkflowTransitionFactory.create(run=run, step_name="reserve")
    if phase != Phase.SUBMITTING:
        WorkflowTransitionFactory.create(
            run=run,
            from_phase=Phase.SUBMITTING,
            to_phase=phase,
            step_name="charge",
            reason=f"moved to {phase} by the test",
        )
    started = timezone.now() - timedelta(seconds=1)
    StepRunFactory.create(run=run, index=0, name="reserve", output={"reservation": "r-17"}, started_at=started)
    StepRunFactory.create(
        run=run,
        index=2,
        name="charge",
        status=StepStatus.FAILED,
        error="card processor unreachable",
        started_at=started,
        finished_at=started + timedelta(milliseconds=30),
    )
    return run
