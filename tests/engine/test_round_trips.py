"""What one delivery of a step costs: SQL statements and broker messages, in process.

The engine's speed is its round trips: carried-on steps share a transaction and a row lock, the
run's row is written once per transaction, journal rows go in one INSERT, and a step due at
once runs in the same worker instead of through the broker. These counts pin that: a change
that adds a statement or a message to a step's path fails here, not in a benchmark."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestrator.celery import app as celery_app
from orchestrator.engine import Step, StepContext, Wait, Workflow, registry
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import STEP_TASK, step_execute, workflow_resume, workflow_start, workflow_sweep

pytestmark = pytest.mark.django_db(transaction=True)


RESUMED: set[uuid.UUID] = set()


def _wait_once(ctx: StepContext) -> Any:
    if ctx.run_id not in RESUMED:
        return Wait(phase=Phase.CONFIRMING, resume_at=timezone.now() + timedelta(seconds=600), info={"for": "x"})
    return {"ok": True}


def _plain(ctx: StepContext) -> dict[str, str]:
    return {"step": ctx.step}


registry.register(
    Workflow(
        kind="test.round_trips.wait",
        steps=(Step("before", _plain), Step("wait", _wait_once), Step("after", _plain)),
    )
)


@dataclass
class Sent:
    messages: list[tuple[str, Any, float | None]]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    record = Sent(messages=[])

    def send_task(name: str, args: Any = None, countdown: float | None = None, **kwargs: Any) -> None:
        record.messages.append((name, args, countdown))

    monkeypatch.setattr(celery_app, "send_task", send_task)
    yield record


def _cost(sent: Sent, action: Any) -> tuple[Any, int, int]:
    before = len(sent.messages)
    with CaptureQueriesContext(connection) as queries:
        result = action()
    return result, len(queries.captured_queries), len(sent.messages) - before


def _started(sent: Sent, kind: str, payload: dict[str, Any] | None = None) -> WorkflowRun:
    run, _ = workflow_start(kind=kind, input=payload or {})
    sent.messages.clear()
    return run


def test_a_start_costs_four_statements_and_one_message(sent: Sent) -> None:
    (run, created), queries, messages = _cost(sent, lambda: workflow_start(kind="engine.noop"))
    assert created
    assert (queries, messages) == (4, 1)
    assert sent.messages == [(STEP_TASK, [str(run.id), 0], None)]


def test_five_atomic_steps_run_in_one_delivery_and_one_transaction(sent: Sent) -> None:
    run = _started(sent, "engine.noop")
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, queries, messages) == ("done", 6, 0)
    assert WorkflowRun.objects.get(pk=run.id).phase == Phase.COMPLETED


def test_without_an_inline_budget_each_step_sends_the_next(sent: Sent) -> None:
    run = _started(sent, "engine.noop")
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0, inline_steps=0))
    assert (outcome, queries, messages) == ("done", 5, 1)
    assert sent.messages == [(STEP_TASK, [str(run.id), 1], None)]


def test_a_leased_step_is_claimed_and_recorded_with_its_neighbours(sent: Sent) -> None:
    run = _started(sent, "test.leased")
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, messages) == ("done", 0)
    # Two of them are the lease's lock, taken in the claim and given back after the record
    # (docs/engine.md, "Leases and dead workers").
    assert queries == 20
    assert WorkflowRun.objects.get(pk=run.id).phase == Phase.COMPLETED


def test_a_carried_step_that_raises_reruns_its_batch_and_schedules_its_retry(sent: Sent) -> None:
    run = _started(sent, "test.effects", {"fail": {"charge": 1}})
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, messages) == ("retry", 1)
    assert queries == 22
    name, args, countdown = sent.messages[0]
    assert (name, args) == (STEP_TASK, [str(run.id), 2]) and countdown is not None


def test_a_terminal_failure_runs_the_compensations_in_the_same_delivery(sent: Sent) -> None:
    run = _started(sent, "test.effects", {"terminal_at": "send"})
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, messages) == ("failed", 0)
    assert queries == 38
    assert WorkflowRun.objects.get(pk=run.id).phase == Phase.FAILED


def test_a_blocked_run_stops_without_a_message(sent: Sent) -> None:
    run = _started(sent, "test.blocked")
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, messages) == ("blocked", 0)
    assert queries == 19
    assert WorkflowRun.objects.get(pk=run.id).phase == Phase.BLOCKED


def test_a_step_starting_another_run_sends_that_run_its_message(sent: Sent) -> None:
    run = _started(sent, "test.parent")
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, messages) == ("done", 1)
    assert queries == 11
    child = WorkflowRun.objects.get(idempotency_key=f"child-of-{run.id}")
    assert sent.messages == [(STEP_TASK, [str(child.id), 0], None)]


def test_a_wait_past_the_countdown_cap_sends_nothing_and_a_resume_sends_the_step(sent: Sent) -> None:
    run = _started(sent, "test.round_trips.wait")
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, queries, messages) == ("waiting", 6, 0)
    waiting = WorkflowRun.objects.get(pk=run.id)
    assert (waiting.phase, waiting.dispatched_at) == (Phase.CONFIRMING, None)
    RESUMED.add(run.id)
    resumed, queries, messages = _cost(sent, lambda: workflow_resume(run_id=run.id, reason="test"))
    assert (resumed, queries, messages) == (True, 5, 1)
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=1))
    assert (outcome, queries, messages) == ("done", 7, 0)


def test_the_sweep_sends_what_is_due(sent: Sent) -> None:
    run = _started(sent, "engine.noop")
    WorkflowRun.objects.filter(pk=run.id).update(dispatched_at=None)
    result, queries, messages = _cost(sent, lambda: workflow_sweep(stall_seconds=60))
    assert (result.due, messages) == (1, 1)
    assert queries == 5  # one of them looks for live leases whose worker died (none here)
    assert sent.messages == [(STEP_TASK, [str(run.id), 0], None)]


def test_a_delivery_for_a_finished_run_runs_nothing(sent: Sent) -> None:
    run = _started(sent, "engine.noop")
    step_execute(run_id=run.id, index=0)
    outcome, queries, messages = _cost(sent, lambda: step_execute(run_id=run.id, index=0))
    assert (outcome, queries, messages) == ("finished", 3, 0)
    assert step_execute(run_id=uuid.uuid4(), index=0) == "missing"
