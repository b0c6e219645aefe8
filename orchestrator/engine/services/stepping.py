"""Executing a run's current step: the path of every step message.

An atomic step runs inside the transaction that journals it, under the run's row lock. A
leased step (atomic=False) is claimed in one transaction, runs outside any, and its outcome is
recorded in another, provided its lease still stands. Steps due at once after it may run in
the same delivery (`Carry`) and in the same transaction (`StepBatch`): batch.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orchestrator.engine.definition import Step, StepContext, Workflow, registry
from orchestrator.engine.errors import RetryableError, TerminalError
from orchestrator.engine.models import ACTIVE_PHASES, WAITING_PHASES, Phase, StepRun, StepStatus, WorkflowRun
from orchestrator.engine.services.batch import Carry, StepBatch
from orchestrator.engine.services.leases import (
    lease_lock_release,
    lease_lock_take,
    lease_locks_guard,
    lease_owner_name,
)
from orchestrator.engine.services.recording import (
    call_step,
    describe,
    finish_compensation,
    journal_entry,
    record_failure,
    record_success,
    step_context,
    target_step,
)
from orchestrator.infra.observability import correlation

logger = logging.getLogger("orchestrator.engine")


def step_execute(*, run_id: uuid.UUID, index: int, inline_steps: int | None = None, redelivered: bool = False) -> str:
    """Executes the run's current step (or compensation) if `index` is still current.

    When that step leaves the next one due at once, up to `inline_steps` (default
    WORKFLOW_INLINE_STEPS) further steps run here, each in its own transaction under the row
    lock exactly as if its message had arrived, instead of a broker round trip per step. The
    run's dispatched_at is set for each, so a worker dying mid-way is recovered by the sweep
    like a lost message. Returns the last step's outcome word: done, retry, waiting, failed,
    dead-letter, or why nothing ran (missing, stale, early, busy, finished, superseded).

    `redelivered`: this message came back unacknowledged, so the delivery before it died (see
    _redelivery_counted)."""
    budget = settings.WORKFLOW_INLINE_STEPS if inline_steps is None else inline_steps
    give_up_at = time.monotonic() + settings.WORKFLOW_INLINE_SECONDS
    if redelivered:
        index, died = _redelivery_counted(run_id, index)
        if died > settings.WORKFLOW_MAX_REDELIVERIES:
            return _record_dead_deliveries(run_id, index)
        # The delivery that died may have carried several steps in one transaction: this one
        # runs its step alone, so that if it dies again, the death is counted against the step
        # that caused it (the next step gets a message of its own).
        budget = 0
    while True:
        carry = Carry(run_id, steps_left=budget, give_up_at=give_up_at)
        outcome = _step_once(run_id, index, carry if carry.may_continue() else None)
        if carry.next_index is None:
            return outcome
        budget = carry.steps_left - 1
        index = carry.next_index


@dataclass(frozen=True)
class _Claim:
    index: int
    journal: StepRun
    lease_until: datetime
    lease_lock: int
    context: StepContext
    compensate: bool


@dataclass(frozen=True)
class _Outcome:
    """What a leased step did, carried from outside any transaction into its record's."""

    result: object = None
    error: Exception | None = None


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
                describe(exc),
                step.name,
            )


def _step_once(run_id: uuid.UUID, index: int, carry: Carry | None) -> str:
    while True:
        steps_left = carry.steps_left if carry else 0  # to rewind to if the transaction rolls back
        try:
            claim = _execute_or_claim(run_id, index, carry)
        except _StepRaised as raised:
            return _journal_raised(run_id, index, raised, carry)
        except _CarriedStepRaised as carried:
            assert carry is not None  # only a carry carries steps
            carry.rewind(steps_left, stop_before=carried.index)
            continue
        break
    while isinstance(claim, _Claim):  # a leased step, and maybe the next one claimed on recording it
        claim = _execute_leased(run_id, claim, carry)
    return claim


def _execute_or_claim(run_id: uuid.UUID, index: int, carry: Carry | None) -> str | _Claim:
    with lease_locks_guard(), transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return "missing"
        with correlation(run.correlation_id):
            skip = _why_not_runnable(run, index)
            if skip:
                return skip
            workflow = registry.get(run.kind)
            compensating = run.phase == Phase.COMPENSATING
            step = target_step(workflow, run)
            if step is None:  # nothing left to compensate
                finish_compensation(run, StepBatch(run, carry))
                return "failed"
            context = step_context(run, step)
            with StepBatch.holding_writes(run, carry) as batch:
                if step.atomic:
                    outcome = _execute_atomic(run, workflow, step, context, compensating, batch)
                    return _carry_on(run, workflow, outcome, batch)
                return _claim_lease(run, step, context, compensating, batch)


def _carry_on(run: WorkflowRun, workflow: Workflow, outcome: str, batch: StepBatch) -> str | _Claim:
    """After recording a step under the run's lock: runs the following atomic steps in the same
    transaction (_carry_on_atomic), and if the step after them is leased and due at once, claims
    its lease in that transaction too, instead of a new transaction and row lock for the claim.

    The claim commits with the record before it, exactly as if its own transaction had followed,
    and the step then runs outside any transaction; a worker dying in between leaves a lease
    that runs out and a dispatched_at the sweep sees, like any claimed step."""
    outcome = _carry_on_atomic(run, workflow, outcome, batch)
    carry = batch.carry
    if carry is None or not carry.may_carry_on(run, workflow, outcome, atomic=False):
        return outcome
    carry.carry_on()
    step = workflow.steps[run.current_step]
    return _claim_lease(run, step, step_context(run, step), False, batch)


def _carry_on_atomic(run: WorkflowRun, workflow: Workflow, outcome: str, batch: StepBatch) -> str:
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
    carry = batch.carry
    while carry is not None and carry.may_carry_on(run, workflow, outcome, atomic=True):
        carry.carry_on()
        step = workflow.steps[run.current_step]
        context = step_context(run, step)
        journal = journal_entry(run, step, context, False, timezone.now())
        try:
            if run.deadline is not None and journal.started_at > run.deadline:
                raise TerminalError(f"deadline {run.deadline.isoformat()} passed")
            result = call_step(step, context, False)
        except Exception as exc:
            raise _CarriedStepRaised(run, step, exc) from exc
        outcome = record_success(run, workflow, step, journal, result, False, batch)
    return outcome


def _journal_raised(run_id: uuid.UUID, index: int, raised: _StepRaised, carry: Carry | None) -> str:
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        expected = (index, raised.phase, raised.context.attempt - 1)
        if run is None or (run.current_step, run.phase, run.attempts) != expected:
            return "superseded"  # another delivery got to the run after our rollback
        with correlation(run.correlation_id):
            workflow = registry.get(run.kind)
            compensating = run.phase == Phase.COMPENSATING
            step = target_step(workflow, run)
            assert step is not None
            journal = journal_entry(run, step, raised.context, compensating, raised.started)
            # Writes go at once here; the carry still keeps a compensation due at once.
            return record_failure(run, workflow, step, journal, raised.exc, compensating, StepBatch(run, carry))


def _redelivery_counted(run_id: uuid.UUID, index: int) -> tuple[int, int]:
    """Counts a delivery that came back unacknowledged: its worker process died during it (or
    stopped while holding it). Committed on its own, before the step runs again, so that a step
    which kills its process every time still counts up.

    Returns (the step to run, deliveries of it that died since the run's last recorded step).
    The dead delivery may have recorded its step and died in one it kept for itself (due at
    once, no message of its own, in a transaction of its own): the run's current step, due now,
    is then the one to run, as the sweep would send it. Otherwise the message's step, or, when
    the run moved on and nothing is due, nothing counted (0)."""
    with transaction.atomic():
        found = (
            WorkflowRun.objects.select_for_update()
            .filter(pk=run_id, phase__in=[*ACTIVE_PHASES, *WAITING_PHASES])
            .values_list("current_step", "redeliveries", "due_at")
            .first()
        )
        if found is None:
            return index, 0
        current, counted, due_at = found
        if current != index and (due_at is None or due_at > timezone.now() + timedelta(seconds=1)):
            return index, 0
        WorkflowRun.objects.filter(pk=run_id).update(redeliveries=counted + 1)
    return current, counted + 1


def _record_dead_deliveries(run_id: uuid.UUID, index: int) -> str:
    """The step's deliveries keep dying with their process: each one past the allowance is
    recorded as a failed attempt, without running the step, so its retry policy spaces the next
    ones out and dead-letters it in the end, instead of a pool process dying per delivery."""
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or _why_not_runnable(run, index):
            return "stale"
        with correlation(run.correlation_id):
            workflow = registry.get(run.kind)
            compensating = run.phase == Phase.COMPENSATING
            step = target_step(workflow, run)
            if step is None:
                return "stale"
            context = step_context(run, step)
            journal = journal_entry(run, step, context, compensating, timezone.now())
            died = RetryableError(
                f"its worker process died during the step {run.redeliveries} times in a row (killed, out of "
                "memory or over CELERY_TASK_TIME_LIMIT); it runs again when its retry is due"
            )
            return record_failure(run, workflow, step, journal, died, compensating, StepBatch(run, None))


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


def _execute_atomic(
    run: WorkflowRun, workflow: Workflow, step: Step, context: StepContext, compensating: bool, batch: StepBatch
) -> str:
    started = timezone.now()
    try:
        if run.deadline is not None and started > run.deadline:
            raise TerminalError(f"deadline {run.deadline.isoformat()} passed")
        result = call_step(step, context, compensating)
    except Exception as exc:
        raise _StepRaised(exc, context=context, started=started, phase=run.phase) from exc
    journal = journal_entry(run, step, context, compensating, started)
    return record_success(run, workflow, step, journal, result, compensating, batch)


def _claim_lease(run: WorkflowRun, step: Step, context: StepContext, compensating: bool, batch: StepBatch) -> _Claim:
    now = timezone.now()
    if run.lease_until is not None:
        # An earlier attempt's lease ran out, or the sweep found its holder dead: it is
        # superseded. If its worker is still alive, it finds the lease changed and drops its outcome.
        StepRun.objects.filter(run=run, status=StepStatus.RUNNING).update(
            status=StepStatus.FAILED, error="lease expired; superseded by a later attempt", finished_at=now
        )
    journal = journal_entry(run, step, context, compensating, now)
    batch.save_journal(run, journal)  # inserted with the rest; its record updates it by id
    run.lease_until = now + timedelta(seconds=step.timeout)
    # Held by this connection until the outcome is recorded: while it is, the worker is alive.
    run.lease_lock, run.lease_server = lease_lock_take()
    run.lease_owner = lease_owner_name()
    batch.save(run)
    return _Claim(
        index=run.current_step,
        journal=journal,
        lease_until=run.lease_until,
        lease_lock=run.lease_lock,
        context=context,
        compensate=compensating,
    )


def _execute_leased(run_id: uuid.UUID, claim: _Claim, carry: Carry | None) -> str | _Claim:
    # Runs outside any transaction: network calls must not hold a row lock or a connection
    # in a transaction. Concurrent deliveries are kept out by the lease.
    with correlation(claim.context.correlation_id):
        workflow = registry.get(claim.context.kind)
        workflow_step = next(s for s in workflow.steps if s.name == claim.context.step)
        try:
            outcome = _Outcome(result=call_step(workflow_step, claim.context, claim.compensate))
        except Exception as exc:
            outcome = _Outcome(error=exc)
        try:
            while True:
                steps_left = carry.steps_left if carry else 0
                try:
                    return _record_leased(run_id, claim, workflow, workflow_step, outcome, carry)
                except _CarriedStepRaised as carried:
                    # The outcome is in hand: recorded again, without the step that raised.
                    assert carry is not None
                    carry.rewind(steps_left, stop_before=carried.index)
        finally:
            # After the record's commit (a next step claimed there holds a lock of its own), or
            # after it failed: then the sweep takes the run back at once, as from a dead worker.
            lease_lock_release(claim.lease_lock)


def _record_leased(
    run_id: uuid.UUID, claim: _Claim, workflow: Workflow, step: Step, outcome: _Outcome, carry: Carry | None
) -> str | _Claim:
    with lease_locks_guard(), transaction.atomic():
        run = WorkflowRun.objects.select_for_update().get(pk=run_id)
        if (run.lease_until, run.lease_lock, run.current_step) != (claim.lease_until, claim.lease_lock, claim.index):
            # Our lease expired (or the sweep took it for dead) and another attempt took over;
            # its outcome stands.
            return "superseded"
        run.lease_until = run.lease_lock = run.lease_server = None
        run.lease_owner = ""
        journal = claim.journal
        with StepBatch.holding_writes(run, carry) as batch:
            if outcome.error is None:
                recorded = record_success(run, workflow, step, journal, outcome.result, claim.compensate, batch)
                return _carry_on(run, workflow, recorded, batch)
            return record_failure(run, workflow, step, journal, outcome.error, claim.compensate, batch)
