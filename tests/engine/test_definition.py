"""Declaring workflows: the retry backoff, and steps whose outputs are dataclasses."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.engine import RetryPolicy, Step, StepContext, Workflow, registry
from orchestrator.engine.definition import journaled
from orchestrator.engine.models import Phase, StepRun, WorkflowRun
from orchestrator.engine.services import step_execute, workflow_start

# --- retry backoff --------------------------------------------------------------------------


@given(
    base=st.floats(min_value=0, max_value=1000, allow_nan=False),
    cap=st.floats(min_value=0, max_value=10_000, allow_nan=False),
    failed=st.integers(min_value=0, max_value=1000),
)
def test_it_keeps_each_retry_delay_between_half_the_ceiling_and_the_ceiling(
    base: float, cap: float, failed: int
) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap)
    ceiling = min(cap, base * 2 ** max(failed - 1, 0))
    delay = policy.delay(failed)
    assert ceiling / 2 <= delay <= ceiling
    assert delay <= cap


def test_it_doubles_the_ceiling_per_failed_attempt_until_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the longest wait
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    monkeypatch.setattr(random, "uniform", lambda low, high: low)  # the shortest wait
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_it_keeps_the_cap_after_very_many_failed_attempts() -> None:
    policy = RetryPolicy(max_attempts=5000, base_delay=1.0, max_delay=300.0)
    assert 150.0 <= policy.delay(1100) <= 300.0


# --- typed step outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    venue: str
    amount: int


@dataclass(frozen=True)
class Quote:
    price: float
    legs: list[Leg]
    best: Leg | None = None
    note: str = "none"


def _context(outputs: dict[str, object]) -> StepContext:
    return StepContext(
        run_id=uuid.uuid4(), kind="k", step="s", attempt=1, correlation_id="c", input={}, outputs=outputs
    )


def test_a_dataclass_output_is_journaled_as_its_dict_and_read_back_typed() -> None:
    quote = Quote(price=1.5, legs=[Leg("a", 1), Leg("b", 2)], best=Leg("b", 2))
    stored = journaled(quote)
    assert stored == {
        "price": 1.5,
        "legs": [{"venue": "a", "amount": 1}, {"venue": "b", "amount": 2}],
        "best": {"venue": "b", "amount": 2},
        "note": "none",
    }
    assert _context({"quote": stored}).output("quote", Quote) == quote
    assert journaled({"plain": 1}) == {"plain": 1}  # a dict stays as it is


def test_a_typed_read_ignores_keys_the_dataclass_dropped_and_defaults_the_fields_it_gained() -> None:
    older = {"price": 2.0, "legs": [], "best": None, "retired_field": "x"}
    assert _context({"quote": older}).output("quote", Quote) == Quote(price=2.0, legs=[], best=None, note="none")
    with pytest.raises(KeyError):
        _context({}).output("quote", Quote)


@dataclass(frozen=True)
class Priced:
    total: int
    parts: list[int] = field(default_factory=list)


def _price(ctx: StepContext) -> Priced:
    return Priced(total=ctx.input["a"] + ctx.input["b"], parts=[ctx.input["a"], ctx.input["b"]])


def _double(ctx: StepContext) -> dict[str, int]:
    priced = ctx.output("price", Priced)
    assert isinstance(priced, Priced)
    return {"doubled": priced.total * 2, "from_dict": ctx.outputs["price"]["total"]}


registry.register(Workflow(kind="test.typed_outputs", steps=(Step("price", _price), Step("double", _double))))


@pytest.mark.django_db(transaction=True)
def test_a_later_step_reads_an_earlier_dataclass_output_typed_and_as_a_dict() -> None:
    run, _ = workflow_start(kind="test.typed_outputs", input={"a": 2, "b": 3})
    assert step_execute(run_id=run.id, index=0) == "done"
    done = WorkflowRun.objects.get(pk=run.id)
    assert done.phase == Phase.COMPLETED
    assert done.outputs == {"price": {"total": 5, "parts": [2, 3]}, "double": {"doubled": 10, "from_dict": 5}}
    journal = StepRun.objects.get(run=run, name="price")
    assert journal.output == {"total": 5, "parts": [2, 3]}
