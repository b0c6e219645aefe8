"""What every move of a run shares: its transition, its row write, its next message, parking it.

`Immediate` sends and writes as it is asked: the start, resume, replay, discard and sweep move
one run from outside any step. A delivery's steps use a `StepBatch` (batch.py), the same three
calls that may instead hold the writes for one statement or keep the next step for itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orchestrator.celery import app as celery_app
from orchestrator.engine.definition import Workflow, registry
from orchestrator.engine.models import StepRun, WorkflowRun, WorkflowTransition

STEP_TASK = "orchestrator.workflow_step"
ENGINE = "engine"

# Only the fields the engine moves: input and identity never change after the start.
RUN_STATE_FIELDS = [
    "phase",
    "outputs",
    "current_step",
    "step_name",
    "attempts",
    "error",
    # Not transaction_id: the relayer writes it (relayer/services/requesters.py), and a step's
    # copy of the run would overwrite a newer hash with the one it loaded.
    "due_at",
    "dispatched_at",
    "lease_until",
    "lease_lock",
    "lease_server",
    "lease_owner",
    "redeliveries",
    "finished_at",
    "updated_at",
]


class Immediate:
    """Writes the run and its journal rows now, and sends the next step's message after commit."""

    def save(self, run: WorkflowRun) -> None:
        run.save(update_fields=RUN_STATE_FIELDS)

    def save_journal(self, run: WorkflowRun, journal: StepRun) -> None:
        journal.save()

    def dispatch(self, run: WorkflowRun, workflow: Workflow, *, delay: float, save: bool = True) -> None:
        """Sets the run's next due time, saves it, and sends the step message after commit.

        Delays longer than WORKFLOW_MAX_COUNTDOWN_SECONDS are not sent at all: the sweep sends
        them when due, so no broker ever holds a long countdown."""
        now = timezone.now()
        run.due_at = now + timedelta(seconds=delay)
        send = delay <= settings.WORKFLOW_MAX_COUNTDOWN_SECONDS
        run.dispatched_at = now if send else None
        if save:
            self.save(run)
        if self.keeps(run, workflow, delay) or not send:
            return
        args = [str(run.id), run.current_step]
        headers = {"correlation_id": run.correlation_id}
        countdown = delay if delay > 0 else None
        transaction.on_commit(
            lambda: celery_app.send_task(
                STEP_TASK, args=args, queue=workflow.queue, countdown=countdown, headers=headers
            )
        )

    def keeps(self, run: WorkflowRun, workflow: Workflow, delay: float) -> bool:
        """Whether this worker runs the step just dispatched itself, so no message goes out."""
        return False


IMMEDIATE = Immediate()


def transition(run: WorkflowRun, from_phase: str, to_phase: str, *, reason: str, actor: str) -> None:
    run.phase = to_phase
    WorkflowTransition.objects.create(
        run=run,
        from_phase=from_phase,
        to_phase=to_phase,
        step_name=run.step_name,
        reason=reason[:2000],
        actor=actor,
        correlation_id=run.correlation_id,
    )
    hook = registry.get(run.kind).on_transition
    if hook is not None and from_phase != to_phase:
        hook(run, from_phase, to_phase)


def park(
    run: WorkflowRun,
    phase: str,
    *,
    reason: str,
    writes: Immediate,
    actor: str = ENGINE,
    ends: bool = False,
    now: datetime | None = None,
) -> None:
    """Moves the run to `phase` (with a transition, if that is a change) with nothing scheduled:
    no due time and no message out, so neither the sweep nor a delivery moves it again; only
    an event (a resume, a replay, a discard) does. A run that `ends` also gives up its lease (no
    attempt of its step runs any more) and is finished `now` (by default, after the transition)."""
    if run.phase != phase:
        transition(run, run.phase, phase, reason=reason, actor=actor)
    run.due_at = None
    run.dispatched_at = None
    if ends:
        run.lease_until = None
        run.lease_lock = run.lease_server = None
        run.lease_owner = ""
        run.finished_at = now or timezone.now()
    writes.save(run)
