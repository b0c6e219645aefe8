"""Moving runs from outside a step: an event resumes a waiting run; an operator replays or
discards a dead-lettered one."""

from __future__ import annotations

import logging
import uuid

from django.db import transaction

from orchestrator.engine.definition import registry
from orchestrator.engine.errors import WorkflowError
from orchestrator.engine.models import WAITING_PHASES, Phase, WorkflowRun, WorkflowTransition
from orchestrator.engine.services.dispatch import ENGINE, IMMEDIATE, park, transition
from orchestrator.infra.errors import DomainError
from orchestrator.infra.observability import correlation

logger = logging.getLogger("orchestrator.engine")


class RunNotReplayable(DomainError, WorkflowError):
    """Only dead-lettered runs can be replayed."""

    code = "run_not_replayable"
    http_status = 409


class RunNotDiscardable(DomainError, WorkflowError):
    """Only dead-lettered runs can be discarded, and only with a reason."""

    code = "run_not_discardable"
    http_status = 409


def workflow_resume(*, run_id: uuid.UUID, reason: str = "event", actor: str = ENGINE) -> bool:
    """Wakes a run waiting in a waiting phase so its current step runs again now.

    Returns False if the run is not waiting (already resumed or finished)."""
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.phase not in WAITING_PHASES:
            return False
        workflow = registry.get(run.kind)
        # The phase stays (the step decides where the run goes next), so not transition(): the
        # row records who woke the run, and the phase hook has no change to mirror.
        WorkflowTransition.objects.create(
            run=run,
            from_phase=run.phase,
            to_phase=run.phase,
            step_name=run.step_name,
            reason=f"resume: {reason}",
            actor=actor,
            correlation_id=run.correlation_id,
        )
        IMMEDIATE.dispatch(run, workflow, delay=0.0)
    return True


def workflow_replay(*, run_id: uuid.UUID, actor: str) -> WorkflowRun:
    """Puts a dead-lettered run back where it stopped, with a fresh retry budget.

    Raises RunNotReplayable unless the run is in dead-letter."""
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().get(pk=run_id)
        if run.phase != Phase.DEAD_LETTER:
            raise RunNotReplayable(f"run {run.id} is {run.phase}, only dead-letter runs replay")
        workflow = registry.get(run.kind)
        came_from = (
            run.transitions.filter(to_phase=Phase.DEAD_LETTER)
            .order_by("-id")
            .values_list("from_phase", flat=True)
            .first()
        )
        back_to = Phase.COMPENSATING if came_from == Phase.COMPENSATING else Phase.SUBMITTING
        run.attempts = 0
        run.lease_until = None
        transition(run, run.phase, back_to, reason="replayed", actor=actor)
        IMMEDIATE.dispatch(run, workflow, delay=0.0)
    with correlation(run.correlation_id):
        logger.info("workflow %s %s replayed by %s", run.kind, run.id, actor)
    return run


def workflow_discard(*, run_id: uuid.UUID, actor: str, reason: str) -> WorkflowRun:
    """Gives up on a dead-lettered run: it ends in `failed`, with the reason in its transition.

    No compensation runs: a discard is an operator's decision about a run whose effects they
    have looked at (and perhaps settled by hand), not a fault. Raises RunNotDiscardable unless
    the run is in dead-letter and a reason is given."""
    reason = reason.strip()
    if not reason:
        raise RunNotDiscardable("a discard needs a reason")
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().get(pk=run_id)
        if run.phase != Phase.DEAD_LETTER:
            raise RunNotDiscardable(f"run {run.id} is {run.phase}, only dead-letter runs are discarded")
        with correlation(run.correlation_id):
            park(run, Phase.FAILED, reason=f"discarded: {reason}", actor=actor, writes=IMMEDIATE, ends=True)
            logger.info("workflow %s %s discarded by %s: %s", run.kind, run.id, actor, reason)
    return run
