"""Moving workflow runs: start, execute one step, resume, replay, discard, sweep.

Invariants:
- A step's journal entry, the run's new position and the next message are decided in one
  transaction under the run's row lock; the message is sent only after that commits.
- A step journaled as done is never executed again: a message for a step that is no longer
  current is dropped, so duplicate deliveries are harmless.
- No run depends on a broker message alone: `due_at`/`dispatched_at` say what should happen
  next, and the sweep re-dispatches anything overdue (lost message, killed worker).

Where it is done:
- starting.py: workflow_start.
- stepping.py: step_execute, the path of every step message (atomic, leased, carried steps).
- recording.py: a step's outcome journaled and the run moved on (retry, wait, compensation, end).
- operating.py: workflow_resume, workflow_replay, workflow_discard.
- sweeping.py: workflow_sweep.
- batch.py: the round-trip savings (steps carried on in one worker and one transaction,
  writes held for one statement) as the objects `Carry` and `StepBatch`.
- dispatch.py: transitions, the next message, and `park` (a run left with nothing scheduled).
"""

from orchestrator.engine.services.dispatch import ENGINE, STEP_TASK
from orchestrator.engine.services.operating import (
    RunNotDiscardable,
    RunNotReplayable,
    workflow_discard,
    workflow_replay,
    workflow_resume,
)
from orchestrator.engine.services.starting import workflow_start
from orchestrator.engine.services.stepping import step_execute
from orchestrator.engine.services.sweeping import SweepResult, workflow_sweep

__all__ = [
    "ENGINE",
    "STEP_TASK",
    "RunNotDiscardable",
    "RunNotReplayable",
    "SweepResult",
    "step_execute",
    "workflow_discard",
    "workflow_replay",
    "workflow_resume",
    "workflow_start",
    "workflow_sweep",
]
