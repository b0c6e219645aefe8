"""Moving workflow runs: start, execute one step, resume, replay, sweep.

Invariants:
- A step's journal entry, the run's new position and the next message are decided in one
  transaction under the run's row lock; the message is sent only after that commits.
- A step journaled as done is never executed again: a message for a step that is no longer
  current is dropped, so duplicate deliveries are harmless.
- No run depends on a broker message alone: `due_at`/`dispatched_at` say what should happen
  next, and the sweep re-dispatches anything overdue (lost message, killed worker).
"""

from __future__ import annotations

import contextvars
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator.celery import app as celery_app
from orchestrator.engine.definition import Step, StepContext, Wait, Workflow, registry
from orchestrator.engine.errors import Blocked, TerminalError, WorkflowError
from orchestrator.engine.models import (
    ACTIVE_PHASES,
    WAITING_PHASES,
    Phase,
    StepKind,
    StepRun,
    StepStatus,
    WorkflowRun,
    WorkflowTransition,
)
from orchestrator.infra.observability import correlation, current_correlation_id, new_correlation_id

logger = logging.getLogger("orchestrator.engine")

STEP_TASK = "orchestrator.workflow_step"
ENGINE = "engine"


class RunNotReplayable(WorkflowError):
    """Only dead-lettered runs can be replayed."""


class RunNotDiscardable(WorkflowError):
    """Only dead-lettered runs can be discarded, and only with a reason."""


# --- starting -----------------------------------------------------------------------------


def workflow_start(
    *,
    kind: str,
    input: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    deadline_seconds: float | None = None,
    owner: Any = None,
    new_key: bool = False,
) -> tuple[WorkflowRun, bool]:
    """Creates a run and enqueues its first step after commit.

    Returns (run, created). The same idempotency key returns the existing run and starts
    nothing. Raises UnknownWorkflow for an unregistered kind.

    With new_key the caller vouches that no run has the key yet (it names a row made in the
    caller's transaction, or a fresh uuid): the insert goes without the savepoint that catches
    a lost race (two round trips, on the path of every feed), and a duplicate would fail the
    caller's transaction instead."""
    workflow = registry.get(kind)
    key = idempotency_key or f"{kind}:{uuid.uuid4()}"
    cid = correlation_id or (current_correlation_id() if current_correlation_id() != "-" else "")
    now = timezone.now()
    run = WorkflowRun(
        kind=kind,
        idempotency_key=key,
        correlation_id=cid or new_correlation_id(),
        input=input or {},
        step_name=workflow.steps[0].name,
        deadline=now + timedelta(seconds=deadline_seconds) if deadline_seconds else None,
        owner=owner,
    )
    if new_key or idempotency_key is None:
        with transaction.atomic(savepoint=False):
            _insert(run, workflow)
        return run, True
    try:
        with transaction.atomic():
            _insert(run, workflow)
    except IntegrityError:
        # Lost the race on the unique idempotency key (or it existed already): same run.
        return WorkflowRun.objects.get(idempotency_key=key), False
    return run, True


def _insert(run: WorkflowRun, workflow: Workflow) -> None:
    _dispatch(run, workflow, delay=0.0, save=False)
    run.save(force_insert=True)
    _transition(run, "", Phase.SUBMITTING, reason="started", actor=ENGINE)


# --- executing one step -------------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    index: int
    journal: StepRun
    lease_until: datetime
    context: StepContext
    compensate: bool


class _StepRaised(Exception):
    """Carries a step's exception out of the transaction it ran in: that transaction, with the
    step's partial writes, rolls back, and the failure is journaled in a fresh one. (Cheaper
    than a savepoint around every step, which costs two round trips on the happy path.)"""

    def __init__(self, exc: Exception, *, context: StepContext, started: datetime, phase: str) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.context = context
        self.started = started
        self.phase = phase


def step_execute(*, run_id: uuid.UUID, index: int, inline_steps: int | None = None) -> str:
    """Executes the run's current step (or compensation) if `index` is still current.

    When that step leaves the next one due at once, up to `inline_steps` (default
    WORKFLOW_INLINE_STEPS) further steps run here, each in its own transaction under the row
    lock exactly as if its message had arrived, instead of a broker round trip per step. The
    run's dispatched_at is set for each, so a worker dying mid-way is recovered by the sweep
    like a lost message. Returns the last step's outcome word: done, retry, waiting, failed,
    dead-letter, or why nothing ran (missing, stale, early, busy, finished, superseded)."""
    budget = settings.WORKFLOW_INLINE_STEPS if inline_steps is None else inline_steps
    give_up_at = time.monotonic() + settings.WORKFLOW_INLINE_SECONDS
    while True:
        continuation = _Continuation(run_id, steps_left=budget, give_up_at=give_up_at)
        token = _inline.set(continuation if continuation.may_continue() else None)
        try:
            outcome = _step_once(run_id, index)
        finally:
            _inline.reset(token)
        if continuation.next_index is None:
            return outcome
        budget = continuation.steps_left - 1
        index = continuation.next_index


@dataclass
class _Continuation:
    """Set while a step of `run_id` runs in a worker that may carry on with that run's next
    step itself. Only that run: a run the step starts (a relay, say) gets its message."""

    run_id: uuid.UUID
    steps_left: int = 0
    give_up_at: float = 0.0
    next_index: int | None = None
    stop_before: int | None = None  # carry no atomic step from this index on in the same transaction

    def may_continue(self) -> bool:
        return self.steps_left > 0 and time.monotonic() < self.give_up_at


_inline: contextvars.ContextVar[_Continuation | None] = contextvars.ContextVar("inline", default=None)


class _CarriedStepRaised(Exception):
    """A step carried on in the transaction of the steps before it raised: that transaction
    rolls back whole, and the batch runs again stopping before `index` (see _carry_on_atomic)."""

    def __init__(self, run: WorkflowRun, step: Step, exc: Exception) -> None:
        super().__init__(f"{step.name}: {exc}")
        self.index = run.current_step
        with correlation(run.correlation_id):
            logger.info(
                "workflow %s %s step %s raised after the steps carried before it (%s); "
                "rolling them back to run them again, and %s on its own",
                run.kind,
                run.id,
                step.name,
                _describe(exc),
                step.name,
            )


@dataclass(frozen=True)
class _Rewind:
    """A continuation as it was before a transaction, to go back to when it rolls back."""

    continuation: _Continuation | None
    steps_left: int

    @classmethod
    def of(cls, continuation: _Continuation | None) -> _Rewind:
        return cls(continuation, continuation.steps_left if continuation else 0)

    def to_stop_before(self, carried: _CarriedStepRaised) -> None:
        assert self.continuation is not None  # only a continuation carries steps
        self.continuation.steps_left = self.steps_left
        self.continuation.next_index = None
        self.continuation.stop_before = carried.index


def _step_once(run_id: uuid.UUID, index: int) -> str:
    while True:
        rewind = _Rewind.of(_inline.get())
        try:
            claim = _execute_or_claim(run_id, index)
        except _StepRaised as raised:
            return _journal_raised(run_id, index, raised)
        except _CarriedStepRaised as carried:
            rewind.to_stop_before(carried)
            continue
        break
    while isinstance(claim, _Claim):  # a leased step, and maybe the next one claimed on recording it
        claim = _execute_leased(run_id, claim)
    return claim


def _execute_or_claim(run_id: uuid.UUID, index: int) -> str | _Claim:
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return "missing"
        with correlation(run.correlation_id):
            skip = _why_not_runnable(run, index)
            if skip:
                return skip
            workflow = registry.get(run.kind)
            compensating = run.phase == Phase.COMPENSATING
            step = _target_step(workflow, run)
            if step is None:  # nothing left to compensate
                _finish_compensation(run)
                return "failed"
            context = _context(run, step)
            with _writes_deferred(run):
                if step.atomic:
                    outcome = _execute_atomic(run, workflow, step, context, compensating)
                    return _carry_on(run, workflow, outcome)
                return _claim_lease(run, step, context, compensating)


def _carry_on(run: WorkflowRun, workflow: Workflow, outcome: str) -> str | _Claim:
    """After recording a step under the run's lock: runs the following atomic steps in the same
    transaction (_carry_on_atomic), and if the step after them is leased and due at once, claims
    its lease in that transaction too, instead of a new transaction and row lock for the claim.

    The claim commits with the record before it, exactly as if its own transaction had followed,
    and the step then runs outside any transaction; a worker dying in between leaves a lease
    that runs out and a dispatched_at the sweep sees, like any claimed step."""
    outcome = _carry_on_atomic(run, workflow, outcome)
    continuation = _inline.get()
    if continuation is None or not _may_carry_on(run, workflow, continuation, outcome, atomic=False):
        return outcome
    continuation.next_index = None
    continuation.steps_left -= 1
    step = workflow.steps[run.current_step]
    return _claim_lease(run, step, _context(run, step), False)


def _may_carry_on(
    run: WorkflowRun, workflow: Workflow, continuation: _Continuation, outcome: str, *, atomic: bool
) -> bool:
    """Whether this worker may go straight on with the run's next step, which must be atomic
    (or leased, with atomic=False): the last one is done, the next is due at once, and the
    inline budget and time cap allow it."""
    return (
        outcome == "done"
        and continuation.run_id == run.id
        and continuation.next_index == run.current_step
        and continuation.steps_left > 1
        and time.monotonic() < continuation.give_up_at
        and run.phase == Phase.SUBMITTING
        and workflow.steps[run.current_step].atomic == atomic
        and not (atomic and continuation.stop_before is not None and run.current_step >= continuation.stop_before)
    )


def _carry_on_atomic(run: WorkflowRun, workflow: Workflow, outcome: str) -> str:
    """Runs the following steps in the same transaction while they are atomic and due at once;
    the batch stops at the inline budget, the time cap, a leased step or a wait.

    Each is journaled on its own row, and their database effects commit together with their
    journal entries, so a worker dying in the middle loses them all and they run again:
    exactly once still holds. This saves a commit and a row lock per step.

    No savepoint per step (two round trips each): a carried step that raises rolls the whole
    transaction back, its predecessors in the batch included, and _step_once (or
    _execute_leased, for a leased step's record) runs the batch again stopping before it, so
    that it runs first in a transaction of its own, where its failure is journaled like any
    step's. A failure costs the steps before it a second run, undone as the first was."""
    continuation = _inline.get()
    while continuation is not None and _may_carry_on(run, workflow, continuation, outcome, atomic=True):
        continuation.next_index = None
        continuation.steps_left -= 1
        step = workflow.steps[run.current_step]
        context = _context(run, step)
        journal = _journal(run, step, context, False, timezone.now())
        try:
            if run.deadline is not None and journal.started_at > run.deadline:
                raise TerminalError(f"deadline {run.deadline.isoformat()} passed")
            result = _call(step, context, False)
        except Exception as exc:
            raise _CarriedStepRaised(run, step, exc) from exc
        outcome = _record_success(run, workflow, step, journal, result, False)
    return outcome


def _journal_raised(run_id: uuid.UUID, index: int, raised: _StepRaised) -> str:
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        expected = (index, raised.phase, raised.context.attempt - 1)
        if run is None or (run.current_step, run.phase, run.attempts) != expected:
            return "superseded"  # another delivery got to the run after our rollback
        with correlation(run.correlation_id):
            workflow = registry.get(run.kind)
            compensating = run.phase == Phase.COMPENSATING
            step = _target_step(workflow, run)
            assert step is not None
            journal = _journal(run, step, raised.context, compensating, raised.started)
            return _record_failure(run, workflow, step, journal, raised.exc, compensating)


def _why_not_runnable(run: WorkflowRun, index: int) -> str:
    now = timezone.now()
    if run.phase not in ACTIVE_PHASES and run.phase not in WAITING_PHASES:
        return "finished"
    if run.current_step != index:
        return "stale"  # that step is journaled as done (or compensated) already
    if run.due_at is None:
        return "waiting"  # a waiting phase with no timer: only an event resumes it
    if run.due_at > now + timedelta(seconds=1):
        return "early"  # a duplicate of a message whose backoff has not elapsed
    if run.lease_until is not None and run.lease_until > now:
        return "busy"
    return ""


def _target_step(workflow: Workflow, run: WorkflowRun) -> Step | None:
    if run.phase != Phase.COMPENSATING:
        return workflow.steps[run.current_step]
    # Compensations run newest first over the steps before the one that failed.
    while run.current_step > 0:
        candidate = workflow.steps[run.current_step - 1]
        if candidate.compensate is not None:
            return candidate
        run.current_step -= 1
    return None


def _context(run: WorkflowRun, step: Step) -> StepContext:
    return StepContext(
        run_id=run.id,
        kind=run.kind,
        step=step.name,
        attempt=run.attempts + 1,
        correlation_id=run.correlation_id,
        input=run.input,
        outputs=dict(run.outputs),
    )


def _call(step: Step, context: StepContext, compensating: bool) -> Any:
    fn = step.compensate if compensating else step.fn
    assert fn is not None
    return fn(context)


def _execute_atomic(run: WorkflowRun, workflow: Workflow, step: Step, context: StepContext, compensating: bool) -> str:
    started = timezone.now()
    try:
        if run.deadline is not None and started > run.deadline:
            raise TerminalError(f"deadline {run.deadline.isoformat()} passed")
        result = _call(step, context, compensating)
    except Exception as exc:
        raise _StepRaised(exc, context=context, started=started, phase=run.phase) from exc
    journal = _journal(run, step, context, compensating, started)
    return _record_success(run, workflow, step, journal, result, compensating)


def _journal(run: WorkflowRun, step: Step, context: StepContext, compensating: bool, started: datetime) -> StepRun:
    return StepRun(
        run=run,
        index=_journal_index(run, compensating),
        name=step.name,
        kind=StepKind.COMPENSATE if compensating else StepKind.FORWARD,
        attempt=context.attempt,
        status=StepStatus.RUNNING,
        input=_step_input(run),
        started_at=started,
    )


def _claim_lease(run: WorkflowRun, step: Step, context: StepContext, compensating: bool) -> _Claim:
    now = timezone.now()
    if run.lease_until is not None:
        # An earlier attempt's lease ran out: it is superseded. If its worker is still alive,
        # it finds the lease changed and drops its outcome.
        StepRun.objects.filter(run=run, status=StepStatus.RUNNING).update(
            status=StepStatus.FAILED, error="lease expired; superseded by a later attempt", finished_at=now
        )
    journal = _journal(run, step, context, compensating, now)
    _save_journal(run, journal)  # inserted with the rest; its record updates it by id
    run.lease_until = now + timedelta(seconds=step.timeout)
    _save(run)
    return _Claim(
        index=run.current_step, journal=journal, lease_until=run.lease_until, context=context, compensate=compensating
    )


def _execute_leased(run_id: uuid.UUID, claim: _Claim) -> str | _Claim:
    # Runs outside any transaction: network calls must not hold a row lock or a connection
    # in a transaction. Concurrent deliveries are kept out by the lease.
    outcome: tuple[str, Any]
    with correlation(claim.context.correlation_id):
        workflow = registry.get(claim.context.kind)
        workflow_step = next(s for s in workflow.steps if s.name == claim.context.step)
        try:
            outcome = ("ok", _call(workflow_step, claim.context, claim.compensate))
        except Exception as exc:
            outcome = ("error", exc)
        while True:
            rewind = _Rewind.of(_inline.get())
            try:
                return _record_leased(run_id, claim, workflow, workflow_step, outcome)
            except _CarriedStepRaised as carried:
                # The outcome is in hand: recorded again, without the step that raised.
                rewind.to_stop_before(carried)


def _record_leased(
    run_id: uuid.UUID, claim: _Claim, workflow: Workflow, step: Step, outcome: tuple[str, Any]
) -> str | _Claim:
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().get(pk=run_id)
        if run.lease_until != claim.lease_until or run.current_step != claim.index:
            # Our lease expired and another attempt took over; its outcome stands.
            return "superseded"
        run.lease_until = None
        journal = claim.journal
        with _writes_deferred(run):
            if outcome[0] == "ok":
                recorded = _record_success(run, workflow, step, journal, outcome[1], claim.compensate)
                return _carry_on(run, workflow, recorded)
            return _record_failure(run, workflow, step, journal, outcome[1], claim.compensate)


def _journal_index(run: WorkflowRun, compensating: bool) -> int:
    return run.current_step - 1 if compensating else run.current_step


def _step_input(run: WorkflowRun) -> dict[str, Any]:
    # What the step saw: the run input plus the outputs it could read. Kept small on purpose.
    return {"input": run.input, "previous": sorted(run.outputs)}


def _record_success(
    run: WorkflowRun,
    workflow: Workflow,
    step: Step,
    journal: StepRun,
    result: Any,
    compensating: bool,
) -> str:
    now = timezone.now()
    journal.finished_at = now
    run.attempts = 0
    if not compensating:
        run.error = ""  # a compensating run keeps the error that made it fail
    if isinstance(result, Wait):
        journal.status = StepStatus.WAITING
        journal.output = {"phase": result.phase, **result.info}
        _save_journal(run, journal)
        _log_step_done(run, journal)
        if run.phase != result.phase:
            _transition(run, run.phase, result.phase, reason=str(result.info or "waiting"), actor=ENGINE)
        if result.resume_at is None:
            run.due_at = None
            run.dispatched_at = None
            _save(run)
        else:
            _dispatch(run, workflow, delay=max((result.resume_at - now).total_seconds(), 0.0))
        return "waiting"

    journal.status = StepStatus.DONE
    journal.output = result
    _save_journal(run, journal)
    _log_step_done(run, journal)
    if compensating:
        run.current_step -= 1
        run.step_name = step.name
        if _target_step(workflow, run) is None:
            _finish_compensation(run)
            return "failed"
        _dispatch(run, workflow, delay=0.0)
        return "done"

    run.outputs = {**run.outputs, step.name: result}
    if run.phase != Phase.SUBMITTING:
        _transition(run, run.phase, Phase.SUBMITTING, reason=f"{step.name} resumed", actor=ENGINE)
    run.current_step += 1
    if run.current_step >= len(workflow.steps):
        _transition(run, run.phase, Phase.COMPLETED, reason="all steps done", actor=ENGINE)
        run.due_at = None
        run.dispatched_at = None
        run.finished_at = now
        _save(run)
        logger.info("workflow %s %s completed", run.kind, run.id)
        return "done"
    run.step_name = workflow.steps[run.current_step].name
    _dispatch(run, workflow, delay=0.0)
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


def _record_failure(
    run: WorkflowRun,
    workflow: Workflow,
    step: Step,
    journal: StepRun,
    exc: Exception,
    compensating: bool,
) -> str:
    journal.finished_at = timezone.now()
    journal.error = _describe(exc)
    run.error = f"{step.name}: {_describe(exc)}"
    terminal = isinstance(exc, TerminalError)
    if not terminal:
        run.attempts += 1
        exhausted = run.attempts >= step.retry.max_attempts
        journal.status = StepStatus.FAILED if exhausted else StepStatus.RETRY
        journal.save()
        if exhausted:
            logger.error("workflow %s %s dead-lettered at %s: %s", run.kind, run.id, step.name, exc)
            _transition(run, run.phase, Phase.DEAD_LETTER, reason=run.error, actor=ENGINE)
            run.due_at = None
            run.dispatched_at = None
            _save(run)
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
        _dispatch(run, workflow, delay=delay)
        return "retry"

    journal.status = StepStatus.FAILED
    journal.save()
    run.attempts = 0
    if compensating:
        # A compensation that cannot succeed is recorded and the others still run.
        logger.error("workflow %s %s compensation %s failed: %s", run.kind, run.id, step.name, exc)
        run.current_step -= 1
        if _target_step(workflow, run) is None:
            _finish_compensation(run)
            return "failed"
        _dispatch(run, workflow, delay=0.0)
        return "failed"
    if isinstance(exc, Blocked):
        logger.warning("workflow %s %s blocked at %s: %s", run.kind, run.id, step.name, exc)
        _transition(run, run.phase, Phase.BLOCKED, reason=run.error, actor=ENGINE)
        run.due_at = run.dispatched_at = run.lease_until = None
        run.finished_at = timezone.now()
        _save(run)
        return "blocked"
    logger.error("workflow %s %s failed at %s: %s", run.kind, run.id, step.name, exc)
    _transition(run, run.phase, Phase.COMPENSATING, reason=run.error, actor=ENGINE)
    if _target_step(workflow, run) is None:
        _finish_compensation(run)
        return "failed"
    _dispatch(run, workflow, delay=0.0)
    return "failed"


def _finish_compensation(run: WorkflowRun) -> None:
    _transition(run, run.phase, Phase.FAILED, reason=run.error or "failed", actor=ENGINE)
    run.due_at = None
    run.dispatched_at = None
    run.lease_until = None
    run.finished_at = timezone.now()
    _save(run)


def _describe(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, WorkflowError):
        return text
    # An unexpected exception: keep its type and the last frame, for the operator.
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{exc.__class__.__name__}: {text}{where}"


# --- moving runs from outside ---------------------------------------------------------------


def workflow_resume(*, run_id: uuid.UUID, reason: str = "event", actor: str = ENGINE) -> bool:
    """Wakes a run waiting in a waiting phase so its current step runs again now.

    Returns False if the run is not waiting (already resumed or finished)."""
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.phase not in WAITING_PHASES:
            return False
        workflow = registry.get(run.kind)
        WorkflowTransition.objects.create(
            run=run,
            from_phase=run.phase,
            to_phase=run.phase,
            step_name=run.step_name,
            reason=f"resume: {reason}",
            actor=actor,
            correlation_id=run.correlation_id,
        )
        _dispatch(run, workflow, delay=0.0)
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
        _transition(run, run.phase, back_to, reason="replayed", actor=actor)
        _dispatch(run, workflow, delay=0.0)
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
            _transition(run, run.phase, Phase.FAILED, reason=f"discarded: {reason}", actor=actor)
            run.due_at = run.dispatched_at = run.lease_until = None
            run.finished_at = timezone.now()
            _save(run)
            logger.info("workflow %s %s discarded by %s: %s", run.kind, run.id, actor, reason)
    return run


@dataclass(frozen=True)
class SweepResult:
    due: int
    stalled: int


def workflow_sweep(*, stall_seconds: float | None = None, limit: int | None = None) -> SweepResult:
    """Dispatches runs whose timer is due and re-dispatches stalled ones.

    A run is stalled when its step was dispatched but has not finished stall_seconds after it
    was due, and no live lease or row lock says a worker is on it: a lost message, or a worker
    killed mid-step. SKIP LOCKED lets several beats sweep at once without waiting on each other
    or on a step in progress."""
    stall = timedelta(seconds=stall_seconds if stall_seconds is not None else settings.WORKFLOW_STALL_SECONDS)
    now = timezone.now()
    due_timer = Q(dispatched_at__isnull=True, due_at__lte=now)
    stalled = Q(dispatched_at__isnull=False, due_at__lte=now - stall)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    counts = {"due": 0, "stalled": 0}
    with transaction.atomic():
        runs = list(
            WorkflowRun.objects.select_for_update(skip_locked=True)
            .filter(phase__in=[*ACTIVE_PHASES, *WAITING_PHASES])
            .filter(due_timer | stalled)
            .filter(free)
            .order_by("due_at")[: limit or settings.WORKFLOW_SWEEP_BATCH]
        )
        for run in runs:
            kind = "due" if run.dispatched_at is None else "stalled"
            counts[kind] += 1
            if kind == "stalled":
                logger.warning("workflow %s %s stalled at %s, re-dispatching", run.kind, run.id, run.step_name)
            # The expired lease stays: the next claim sees it and closes that attempt's journal row.
            _dispatch(run, registry.get(run.kind), delay=0.0)
    return SweepResult(**counts)


# --- helpers --------------------------------------------------------------------------------


_RUN_STATE_FIELDS = [
    "phase",
    "outputs",
    "current_step",
    "step_name",
    "attempts",
    "error",
    "transaction_id",
    "due_at",
    "dispatched_at",
    "lease_until",
    "finished_at",
    "updated_at",
]


@dataclass
class _Deferred:
    """The run's writes held for the end of the transaction that has its row locked: its row
    is written once (not after each step and claim), and the journal rows of the steps done
    in it are inserted in one statement. Nothing reads them in between: the row is locked,
    and the steps see the run in memory."""

    run: WorkflowRun
    save: bool = False
    journals: list[StepRun] = field(default_factory=list)

    def flush(self) -> None:
        if self.journals:
            StepRun.objects.bulk_create(self.journals)
        if self.save:
            self.run.save(update_fields=_RUN_STATE_FIELDS)


_deferred: contextvars.ContextVar[_Deferred | None] = contextvars.ContextVar("deferred", default=None)


@contextmanager
def _writes_deferred(run: WorkflowRun) -> Iterator[None]:
    """Holds the run's writes for the end of the block (a transaction under its row lock).
    An exception skips them: the transaction is rolling back."""
    deferred = _Deferred(run)
    token = _deferred.set(deferred)
    try:
        yield
    finally:
        _deferred.reset(token)
    deferred.flush()


def _save(run: WorkflowRun) -> None:
    deferred = _deferred.get()
    if deferred is not None and deferred.run is run:
        deferred.save = True
        return
    # Only the fields the engine moves: input and identity never change after the start.
    run.save(update_fields=_RUN_STATE_FIELDS)


def _save_journal(run: WorkflowRun, journal: StepRun) -> None:
    deferred = _deferred.get()
    # Deferred rows get their ids from bulk_create (PostgreSQL hands them back): a leased step's
    # record later updates its claim's row by id.
    if deferred is not None and deferred.run is run and journal.pk is None:
        deferred.journals.append(journal)
        return
    journal.save()


def _transition(run: WorkflowRun, from_phase: str, to_phase: str, *, reason: str, actor: str) -> None:
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


def _dispatch(run: WorkflowRun, workflow: Workflow, *, delay: float, save: bool = True) -> None:
    """Saves the run with its next due time and sends the step message after commit.

    Delays longer than WORKFLOW_MAX_COUNTDOWN_SECONDS are not sent at all: the sweep sends them
    when due, so no broker ever holds a long countdown."""
    now = timezone.now()
    run.due_at = now + timedelta(seconds=delay)
    send = delay <= settings.WORKFLOW_MAX_COUNTDOWN_SECONDS
    run.dispatched_at = now if send else None
    if save:
        _save(run)
    continuation = _inline.get()
    if (
        continuation is not None
        and continuation.run_id == run.id
        and continuation.next_index is None
        and delay == 0
        and workflow.inline
    ):
        continuation.next_index = run.current_step  # step_execute runs it after this commits
        return
    if send:
        args = [str(run.id), run.current_step]
        headers = {"correlation_id": run.correlation_id}
        countdown = delay if delay > 0 else None
        transaction.on_commit(
            lambda: celery_app.send_task(
                STEP_TASK, args=args, queue=workflow.queue, countdown=countdown, headers=headers
            )
        )
