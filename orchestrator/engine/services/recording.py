"""Recording a step's outcome under the run's row lock: its journal entry, the run's next
position (the next step, a retry, a wait, compensation, an end) and the dispatch that follows.

Every function here takes the `StepBatch` of the transaction it runs in: what it writes and
sends goes through that batch, so the caller decides whether writes are held and whether the
next step may stay in this worker (batch.py).
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime

from django.utils import timezone

from orchestrator.engine.definition import Step, StepContext, Wait, Workflow, journaled
from orchestrator.engine.errors import Blocked, TerminalError, WorkflowError
from orchestrator.engine.models import Phase, StepKind, StepRun, StepStatus, WorkflowRun
from orchestrator.engine.services.batch import StepBatch
from orchestrator.engine.services.dispatch import ENGINE, park, transition
from orchestrator.infra.tracing import CORRELATION_ID, span, step_attributes, tracing_on

logger = logging.getLogger("orchestrator.engine")


def record_success(
    run: WorkflowRun,
    workflow: Workflow,
    step: Step,
    journal: StepRun,
    result: object,
    compensating: bool,
    batch: StepBatch,
) -> str:
    now = timezone.now()
    journal.finished_at = now
    run.attempts = 0
    run.redeliveries = 0
    if not compensating:
        run.error = ""  # a compensating run keeps the error that made it fail
    if isinstance(result, Wait):
        journal.status = StepStatus.WAITING
        journal.output = {"phase": result.phase, **result.info}
        batch.save_journal(run, journal)
        _log_step_done(run, journal)
        if run.phase != result.phase:
            transition(run, run.phase, result.phase, reason=str(result.info or "waiting"), actor=ENGINE)
        if result.resume_at is None:
            park(run, result.phase, reason="", writes=batch)  # the phase is entered above
        else:
            batch.dispatch(run, workflow, delay=max((result.resume_at - now).total_seconds(), 0.0))
        return "waiting"

    output = journaled(result)
    journal.status = StepStatus.DONE
    journal.output = output
    batch.save_journal(run, journal)
    _log_step_done(run, journal)
    if compensating:
        run.current_step -= 1
        run.step_name = step.name
        if target_step(workflow, run) is None:
            finish_compensation(run, batch)
            return "failed"
        batch.dispatch(run, workflow, delay=0.0)
        return "done"

    run.outputs = {**run.outputs, step.name: output}
    if run.phase != Phase.SUBMITTING:
        transition(run, run.phase, Phase.SUBMITTING, reason=f"{step.name} resumed", actor=ENGINE)
    run.current_step += 1
    if run.current_step >= len(workflow.steps):
        park(run, Phase.COMPLETED, reason="all steps done", writes=batch, ends=True, now=now)
        logger.info("workflow %s %s completed", run.kind, run.id)
        return "done"
    run.step_name = workflow.steps[run.current_step].name
    batch.dispatch(run, workflow, delay=0.0)
    return "done"


def _log_step_done(run: WorkflowRun, journal: StepRun) -> None:
    # One line per step, logged under the run's correlation id (the caller has set it), so
    # grepping a run's id in the logs finds every step it took; failures log their own lines.
    ms = journal.duration_ms or 0.0
    logger.info(
        "workflow %s %s step %s %s #%s %s in %.1f ms",
        run.kind,
        run.id,
        journal.index,
        journal.name if journal.kind == StepKind.FORWARD else f"{journal.name} (compensation)",
        journal.attempt,
        journal.status,
        ms,
    )


def record_failure(
    run: WorkflowRun,
    workflow: Workflow,
    step: Step,
    journal: StepRun,
    exc: Exception,
    compensating: bool,
    batch: StepBatch,
) -> str:
    journal.finished_at = timezone.now()
    journal.error = describe(exc)
    run.error = f"{step.name}: {describe(exc)}"
    run.redeliveries = 0
    terminal = isinstance(exc, TerminalError)
    if not terminal:
        run.attempts += 1
        exhausted = run.attempts >= step.retry.max_attempts
        journal.status = StepStatus.FAILED if exhausted else StepStatus.RETRY
        journal.save()
        if exhausted:
            logger.error("workflow %s %s dead-lettered at %s: %s", run.kind, run.id, step.name, exc)
            park(run, Phase.DEAD_LETTER, reason=run.error, writes=batch)
            return "dead-letter"
        delay = step.retry.delay(run.attempts)
        logger.warning(
            "workflow %s %s step %s failed (attempt %s), retrying in %.1fs: %s",
            run.kind,
            run.id,
            step.name,
            run.attempts,
            delay,
            exc,
        )
        batch.dispatch(run, workflow, delay=delay)
        return "retry"

    journal.status = StepStatus.FAILED
    journal.save()
    run.attempts = 0
    if compensating:
        # A compensation that cannot succeed is recorded and the others still run.
        logger.error("workflow %s %s compensation %s failed: %s", run.kind, run.id, step.name, exc)
        run.current_step -= 1
        if target_step(workflow, run) is None:
            finish_compensation(run, batch)
            return "failed"
        batch.dispatch(run, workflow, delay=0.0)
        return "failed"
    if isinstance(exc, Blocked):
        logger.warning("workflow %s %s blocked at %s: %s", run.kind, run.id, step.name, exc)
        park(run, Phase.BLOCKED, reason=run.error, writes=batch, ends=True)
        return "blocked"
    logger.error("workflow %s %s failed at %s: %s", run.kind, run.id, step.name, exc)
    transition(run, run.phase, Phase.COMPENSATING, reason=run.error, actor=ENGINE)
    if target_step(workflow, run) is None:
        finish_compensation(run, batch)
        return "failed"
    batch.dispatch(run, workflow, delay=0.0)
    return "failed"


def finish_compensation(run: WorkflowRun, batch: StepBatch) -> None:
    park(run, Phase.FAILED, reason=run.error or "failed", writes=batch, ends=True)


def describe(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, WorkflowError):
        return text
    # An unexpected exception: keep its type and the last frame, for the operator.
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{exc.__class__.__name__}: {text}{where}"


def target_step(workflow: Workflow, run: WorkflowRun) -> Step | None:
    if run.phase != Phase.COMPENSATING:
        return workflow.steps[run.current_step]
    # Compensations run newest first over the steps before the one that failed.
    while run.current_step > 0:
        candidate = workflow.steps[run.current_step - 1]
        if candidate.compensate is not None:
            return candidate
        run.current_step -= 1
    return None


def step_context(run: WorkflowRun, step: Step) -> StepContext:
    return StepContext(
        run_id=run.id,
        kind=run.kind,
        step=step.name,
        attempt=run.attempts + 1,
        correlation_id=run.correlation_id,
        input=run.input,
        outputs=dict(run.outputs),
    )


def call_step(step: Step, context: StepContext, compensating: bool) -> object:
    fn = step.compensate if compensating else step.fn
    assert fn is not None
    if not tracing_on():
        return fn(context)
    # Every step and compensation, atomic, leased or carried, runs here: one span each.
    name = f"{context.kind}/{step.name}" + (" compensate" if compensating else "")
    attributes = step_attributes(
        kind=context.kind, run_id=context.run_id, step=step.name, attempt=context.attempt, compensating=compensating
    )
    with span(name, attributes={**attributes, CORRELATION_ID: context.correlation_id}) as current:
        result = fn(context)
        if isinstance(result, Wait):
            current.set_attribute("orchestrator.workflow.wait", result.phase)
        return result


def journal_entry(run: WorkflowRun, step: Step, context: StepContext, compensating: bool, started: datetime) -> StepRun:
    return StepRun(
        run=run,
        index=run.current_step - 1 if compensating else run.current_step,
        name=step.name,
        kind=StepKind.COMPENSATE if compensating else StepKind.FORWARD,
        attempt=context.attempt,
        status=StepStatus.RUNNING,
        # What the step saw: the run input plus the outputs it could read. Kept small on purpose.
        input={"input": run.input, "previous": sorted(run.outputs)},
        started_at=started,
    )
