"""The two-threshold stall rule (orchestrator.engine.selectors.runs_stalled): pending beyond
one threshold and not mutated beyond the other, with no live lease."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.selectors import runs_stalled
from tests.factories import StepRunFactory, WorkflowRunFactory, WorkflowTransitionFactory

pytestmark = pytest.mark.django_db

PENDING, QUIET = 300, 120


@pytest.fixture(autouse=True)
def thresholds(settings: Any) -> None:
    settings.WORKFLOW_STALL_PENDING_SECONDS = PENDING
    settings.WORKFLOW_STALL_NO_MUTATION_SECONDS = QUIET


def ago(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds)


def run(*, created: float = 600, due: float | None = 200, **fields: Any) -> WorkflowRun:
    """A run created `created` s ago whose step was due `due` s ago (None: parked on an event)."""
    made = WorkflowRunFactory.create(due_at=None if due is None else ago(due), dispatched_at=ago(600), **fields)
    WorkflowRun.objects.filter(pk=made.pk).update(created_at=ago(created))
    return made


def stalled() -> set[Any]:
    return set(runs_stalled().values_list("pk", flat=True))


def test_a_run_pending_past_the_first_threshold_and_quiet_past_the_second_is_stalled() -> None:
    old_and_quiet = run()
    StepRunFactory.create(run=old_and_quiet, started_at=ago(500), finished_at=ago(499))
    assert stalled() == {old_and_quiet.pk}


def test_a_young_run_is_not_stalled_however_quiet() -> None:
    run(created=PENDING - 30)
    assert stalled() == set()


@pytest.mark.parametrize("started,finished", [(QUIET - 30, None), (500, QUIET - 30)])
def test_a_journal_entry_within_the_quiet_threshold_is_a_mutation(started: float, finished: float | None) -> None:
    busy = run()
    StepRunFactory.create(run=busy, started_at=ago(started), finished_at=None if finished is None else ago(finished))
    assert stalled() == set()


def test_a_phase_change_within_the_quiet_threshold_is_a_mutation() -> None:
    moved = run(phase=Phase.CONFIRMING)
    WorkflowTransitionFactory.create(run=moved, from_phase=Phase.SUBMITTING, to_phase=Phase.CONFIRMING)
    assert stalled() == set()


def test_the_sweeps_redispatch_is_not_a_mutation() -> None:
    # The sweep sets due_at and dispatched_at again each time; nothing took the step since.
    redispatched = run(due=1)
    WorkflowRun.objects.filter(pk=redispatched.pk).update(dispatched_at=ago(1))
    assert stalled() == {redispatched.pk}


@pytest.mark.parametrize(
    "fields",
    [
        {"due": -60},  # waiting for a later timer
        {"due": None, "phase": Phase.AWAITING_APPROVAL},  # parked on an event: its approvers
        {"lease_until": timezone.now() + timedelta(minutes=5)},  # a worker is on it
        {"phase": Phase.COMPLETED},
        {"phase": Phase.DEAD_LETTER},  # stopped, counted as a dead letter instead
    ],
)
def test_runs_that_wait_for_something_or_have_stopped_are_not_stalled(fields: dict[str, Any]) -> None:
    run(**fields)
    assert stalled() == set()


def test_an_expired_lease_does_not_hide_a_stall() -> None:
    abandoned = run(lease_until=ago(30))
    assert stalled() == {abandoned.pk}
