"""The one failure hierarchy for steps: retry it, or give up on the run."""


class WorkflowError(Exception):
    """Base of the engine's errors."""


class RetryableError(WorkflowError):
    """A transient failure (timeout, 5xx, RPC down): the step is retried with backoff."""


class TerminalError(WorkflowError):
    """A failure that retrying cannot fix (validation, policy, revert): the run fails now and
    the compensations of the steps already done run, newest first."""


class Blocked(TerminalError):
    """A decision, not a fault: the run stops in phase `blocked` (a policy refused it). Nothing
    has happened that needs undoing, so no compensation runs."""


class UnknownWorkflow(WorkflowError):
    """No workflow of that kind is registered in this process."""
