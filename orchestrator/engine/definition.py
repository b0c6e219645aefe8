"""Declaring workflows.

    def reserve(ctx): return {"reservation": reserve_funds(ctx.input["amount"])}
    def release(ctx): release_funds(ctx.outputs["reserve"]["reservation"])
    def send(ctx): return {"tx": relay(ctx.input, idempotency_key=ctx.idempotency_key)}

    registry.register(Workflow(kind="payout", steps=(
        Step("reserve", reserve, compensate=release),
        Step("send", send, retry=RetryPolicy(max_attempts=8), atomic=False),
    )))

`atomic=True` (the default) runs the step inside the transaction that journals it, under the
run's row lock: its database writes and its journal entry commit together or not at all, so
they happen exactly once. Steps that call the network must say `atomic=False`: they run outside
any transaction under a lease, and make their side effect idempotent with `ctx.idempotency_key`
(the same for every attempt of that step).

A step returns JSON (a dict, usually), a `Wait`, or a dataclass instance. A dataclass is
journaled as `dataclasses.asdict(output)`, the same JSON as the dict it stands for, and a later
step reads it back typed with `ctx.output(step_name, TheDataclass)`:

    @dataclass(frozen=True)
    class Reservation:
        reservation: str
        amount: int

    def reserve(ctx) -> Reservation: return Reservation(reserve_funds(ctx.input["amount"]), ...)
    def release(ctx): release_funds(ctx.output("reserve", Reservation).reservation)

The journal keeps JSON, so the dataclass's fields must be JSON values (str, int, float, bool,
None, lists and dicts of them) or dataclasses of such fields (also optional, or in a list),
which are rebuilt too. Keys the
dataclass no longer has are ignored and fields it gained take their defaults, so runs started
before a change to the dataclass read on after it. `ctx.outputs[step_name]` still gives the dict.

How runs move (start, steps, retries, compensation, the sweep): docs/engine.md and
orchestrator/engine/services/.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.engine.errors import UnknownWorkflow

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from orchestrator.engine.models import WorkflowRun

    D = TypeVar("D", bound=DataclassInstance)

logger = logging.getLogger("orchestrator.engine")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits up to base * 2**(n-1), capped."""

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 300.0

    def delay(self, failed_attempts: int) -> float:
        try:
            ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(failed_attempts - 1, 0))
        except OverflowError:  # 2**n no longer fits a float: far past any cap
            ceiling = self.max_delay if self.base_delay > 0 else 0.0
        # "Equal jitter": at least half the backoff, so retries never bunch up at zero.
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class StepContext:
    run_id: uuid.UUID
    kind: str
    step: str
    attempt: int
    correlation_id: str
    input: dict[str, Any]
    outputs: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts of this step: the key for its external side effect."""
        return f"{self.run_id}:{self.step}"

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(logger, {"run": str(self.run_id), "step": self.step})

    def output(self, step: str, as_type: type[D]) -> D:
        """The output of an earlier `step` of this run, built as `as_type` (a dataclass) from the
        JSON it was journaled as. KeyError if that step has no output yet."""
        return _build(as_type, self.outputs[step])


def _build(as_type: type[D], data: dict[str, object]) -> D:
    values: dict[str, object] = {}
    for name, hint in _fields(as_type):
        if name in data:  # else a field added since the output was journaled: its default
            values[name] = _rebuilt(hint, data[name])
    return as_type(**values)


@functools.cache
def _fields(as_type: type) -> tuple[tuple[str, object], ...]:
    # Resolving a dataclass's annotations costs ~0.2 ms (get_type_hints evaluates them); a
    # rebalance reads about eight outputs, so each class is resolved once per process.
    hints = typing.get_type_hints(as_type)
    return tuple((f.name, hints.get(f.name)) for f in dataclasses.fields(as_type))


def _rebuilt(hint: object, value: object) -> object:
    # The JSON shapes asdict() makes of a dataclass field: a nested dataclass (or None in its
    # place), or a list of them. Anything else is a JSON value already.
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(hint, value)
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and value is not None:
        present = [a for a in args if a is not type(None)]
        return _rebuilt(present[0], value) if len(present) == 1 else value
    if typing.get_origin(hint) is list and args and isinstance(value, list):
        return [_rebuilt(args[0], item) for item in value]
    return value


def journaled(output: object) -> object:
    """What the journal and later steps keep of a step's output: a dataclass instance as its
    `asdict`, anything else as it is (JSON already)."""
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return dataclasses.asdict(output)
    return output


@dataclass(frozen=True)
class Wait:
    """Returned by a step that cannot finish yet (an approval, a confirmation).

    The run moves to `phase`; the same step runs again at `resume_at`, or when an event calls
    `workflow_resume`. `info` is journaled so the admin shows what it waits for."""

    phase: str
    resume_at: datetime | None = None
    info: dict[str, Any] = field(default_factory=dict)


# A step returns JSON, a Wait or a dataclass instance; the engine looks at what it got.
StepFn = Callable[[StepContext], object]


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn
    compensate: StepFn | None = None
    retry: RetryPolicy = RetryPolicy()
    atomic: bool = True
    # Lease for non-atomic steps: after this long without an outcome the step may run again.
    timeout: float = 120.0


@dataclass(frozen=True)
class Workflow:
    kind: str
    steps: tuple[Step, ...]
    queue: str = "workflows"
    # Let a worker run the next step itself when it is due at once (see step_execute).
    inline: bool = True
    # Called inside the transaction that changes a run's phase, with (run, from, to): how a
    # domain object mirrors its run (a relay marked dead-letter, say). Database work only.
    on_transition: Callable[[WorkflowRun, str, str], None] | None = None
    # Called with (run, user) for a user who neither started the run nor is staff: whether the
    # domain object the run is about lets that user read it (a vault granted to an API client).
    # Reads only. Without it, a run is the owner's and staff's alone.
    readable_by: Callable[[WorkflowRun, Any], bool] | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"workflow {self.kind}: steps must be non-empty with unique names")


class WorkflowRegistry:
    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def register(self, workflow: Workflow) -> Workflow:
        self._workflows[workflow.kind] = workflow
        return workflow

    def get(self, kind: str) -> Workflow:
        try:
            return self._workflows[kind]
        except KeyError:
            raise UnknownWorkflow(f"no workflow registered for kind {kind!r}") from None

    def kinds(self) -> list[str]:
        return sorted(self._workflows)


registry = WorkflowRegistry()
