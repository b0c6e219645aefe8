"""The durable workflow engine (seeds 002/003).

A workflow is an ordered list of steps. Each step is a plain function of a `StepContext`
returning JSON-serializable output; it may carry a compensation and a retry policy. See
`definition.py` for how to declare one and `services.py` for how runs move.
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
