"""The durable workflow engine: runs of declared workflows, journaled in PostgreSQL.

A workflow is an ordered list of steps. Each step is a plain function of a `StepContext`
returning JSON-serializable output (or a dataclass of it); it may carry a compensation and a
retry policy. See `definition.py` for how to declare one, `services/` for how runs move, and
docs/engine.md for the whole picture.
"""

from orchestrator.engine.definition import (
    RetryPolicy,
    Step,
    StepContext,
    Wait,
    Workflow,
    registry,
)
from orchestrator.engine.errors import Blocked, RetryableError, TerminalError, WorkflowError

__all__ = [
    "Blocked",
    "RetryPolicy",
    "RetryableError",
    "Step",
    "StepContext",
    "TerminalError",
    "Wait",
    "Workflow",
    "WorkflowError",
    "registry",
]
