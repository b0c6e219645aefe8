"""The two round-trip savings of a delivery, as objects handed to the code they act in.

`Carry` is a worker's licence to run a run's next steps itself, instead of a broker round trip
per step (step_execute makes one per delivery). `StepBatch` is what the steps recorded in one
transaction under the run's row lock send and write: the run's row once at the end and their
journal rows in one INSERT (when it holds writes), and the next step's message unless the
carry keeps that step. Code moving a run from outside a step uses `IMMEDIATE` (dispatch.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.engine.definition import Workflow
from orchestrator.engine.models import Phase, StepRun, WorkflowRun
from orchestrator.engine.services.dispatch import RUN_STATE_FIELDS, Immediate


@dataclass
class Carry:
    """This worker may carry on with `run_id`'s next steps: `steps_left` more, until `give_up_at`
    (time.monotonic()). Only that run: a run a step starts (a relay, say) gets its message."""

    run_id: uuid.UUID
    steps_left: int = 0
    give_up_at: float = 0.0
    next_index: int | None = None  # the step kept by a dispatch, for step_execute to run next
    stop_before: int | None = None  # carry no atomic step from this index on in the same transaction

    def may_continue(self) -> bool:
        return self.steps_left > 0 and time.monotonic() < self.give_up_at

    def keeps(self, run: WorkflowRun, workflow: Workflow, delay: float) -> bool:
        """Takes the step just dispatched for this worker, if it is due at once: step_execute
        runs it after this transaction commits, so no message is sent for it."""
        if self.run_id != run.id or self.next_index is not None or delay != 0 or not workflow.inline:
            return False
        self.next_index = run.current_step
        return True

    def may_carry_on(self, run: WorkflowRun, workflow: Workflow, outcome: str, *, atomic: bool) -> bool:
        """Whether this worker may go straight on with the run's next step, in the transaction
        that recorded the last one; that step must be atomic (or leased, with atomic=False).
        The last one is done, the next is due at once, and the budget and time cap allow it."""
        return (
            outcome == "done"
            and self.run_id == run.id
            and self.next_index == run.current_step
            and self.steps_left > 1
            and time.monotonic() < self.give_up_at
            and run.phase == Phase.SUBMITTING
            and workflow.steps[run.current_step].atomic == atomic
            and not (atomic and self.stop_before is not None and run.current_step >= self.stop_before)
        )

    def carry_on(self) -> None:
        """The kept step runs here and now, in the same transaction: it is no longer kept."""
        self.next_index = None
        self.steps_left -= 1

    def rewind(self, steps_left: int, *, stop_before: int) -> None:
        """Back to how it was before a transaction that rolled back (a carried step raised), to
        run that transaction again stopping before the step that raised."""
        self.steps_left = steps_left
        self.next_index = None
        self.stop_before = stop_before


class StepBatch(Immediate):
    """What the steps recorded in one transaction under `run`'s row lock send and write.

    With `hold_writes`, the run's row is written once when the transaction's work is done (not
    after each step and claim), and the journal rows inserted in that transaction go in one
    statement: nothing reads them in between, the row is locked and the steps see the run in
    memory. Without it, writes go at once (the transaction that journals a failure).

    With a `carry`, a dispatch of the run's next step due at once keeps that step for this
    worker instead of sending its message."""

    def __init__(self, run: WorkflowRun, carry: Carry | None, *, hold_writes: bool = False) -> None:
        self.run = run
        self.carry = carry
        self.hold_writes = hold_writes
        self.run_held = False
        self.journals_held: list[StepRun] = []

    @classmethod
    @contextmanager
    def holding_writes(cls, run: WorkflowRun, carry: Carry | None) -> Iterator[StepBatch]:
        """A batch whose writes go when the block ends. An exception skips them: the
        transaction is rolling back."""
        batch = cls(run, carry, hold_writes=True)
        yield batch
        batch.flush()

    def save(self, run: WorkflowRun) -> None:
        if self.hold_writes and run is self.run:
            self.run_held = True
            return
        super().save(run)

    def save_journal(self, run: WorkflowRun, journal: StepRun) -> None:
        # Held rows get their ids from bulk_create (PostgreSQL hands them back): a leased step's
        # record later updates its claim's row by id.
        if self.hold_writes and run is self.run and journal.pk is None:
            self.journals_held.append(journal)
            return
        super().save_journal(run, journal)

    def keeps(self, run: WorkflowRun, workflow: Workflow, delay: float) -> bool:
        return self.carry is not None and self.carry.keeps(run, workflow, delay)

    def flush(self) -> None:
        if self.journals_held:
            StepRun.objects.bulk_create(self.journals_held)
            self.journals_held = []
        if self.run_held:
            self.run.save(update_fields=RUN_STATE_FIELDS)
            self.run_held = False
