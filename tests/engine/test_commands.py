"""The engine's operator command: `manage.py workflows list|show|replay`."""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from tests.factories import WorkflowRunFactory
from tests.support import control
from tests.support.models import Effect
from tests.support.runs import dead_lettered_run, reach


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def make_run(phase: str, *, kind: str = "test.effects") -> WorkflowRun:
    """A bare run row at its last step: no journal, no steps."""
    return WorkflowRunFactory.create(phase=phase, kind=kind, step_name="send")


@pytest.mark.django_db
def test_it_lists_counts_of_runs_by_kind_and_phase() -> None:
    make_run(Phase.COMPLETED)
    make_run(Phase.COMPLETED)
    make_run(Phase.DEAD_LETTER)
    make_run(Phase.SUBMITTING, kind="test.leased")
    out, _ = run_command("workflows", "list")
    rows = [line.split() for line in out.splitlines()]
    assert rows == [
        ["test.effects", "completed", "2"],
        ["test.effects", "dead-letter", "1"],
        ["test.leased", "submitting", "1"],
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["show", "replay"])
@pytest.mark.parametrize("raw", ["not-a-uuid", str(uuid.UUID(int=1))])
def test_it_refuses_an_unknown_run_id(action: str, raw: str) -> None:
    with pytest.raises(CommandError, match="No workflow run"):
        run_command("workflows", action, raw)


@pytest.mark.django_db
def test_it_refuses_to_replay_a_completed_run() -> None:
    run = make_run(Phase.COMPLETED)
    with pytest.raises(CommandError, match="only dead-letter runs replay"):
        run_command("workflows", "replay", str(run.id))
    run.refresh_from_db()
    assert run.phase == Phase.COMPLETED
    assert not run.transitions.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.engine
def test_it_replays_a_dead_lettered_run_to_completion(worker: object) -> None:
    dead = dead_lettered_run()
    assert dead.step_name == "charge"

    control.signal(f"release:{dead.id}")  # the operator fixed the root cause
    out, _ = run_command("workflows", "replay", str(dead.id))
    assert f"Replayed {dead.id}; it continues at charge." in out

    done = reach(dead.id)
    assert sorted(Effect.objects.filter(run_id=dead.id).values_list("name", flat=True)) == sorted(
        ["reserve", "no_undo", "charge", "send"]
    )
    replayed = done.transitions.get(reason="replayed")
    assert (replayed.from_phase, replayed.to_phase, replayed.actor) == (
        Phase.DEAD_LETTER,
        Phase.SUBMITTING,
        "cli",
    )

    # Once completed, it is no longer replayable.
    with pytest.raises(CommandError, match="only dead-letter runs replay"):
        run_command("workflows", "replay", str(dead.id))
    assert WorkflowRun.objects.get(pk=dead.id).phase == Phase.COMPLETED


@pytest.mark.django_db(transaction=True)
@pytest.mark.engine
def test_it_shows_a_run_with_its_journal(worker: object) -> None:
    dead = dead_lettered_run()
    out, _ = run_command("workflows", "show", str(dead.id))
    header, *journal = out.splitlines()
    assert header.startswith(f"test.effects {dead.id} phase=dead-letter step=charge error=")
    assert "blocked until released" in header
    entries = [line.split()[:4] for line in journal]
    assert entries == [
        ["forward", "reserve", "#1", StepStatus.DONE],
        ["forward", "no_undo", "#1", StepStatus.DONE],
        ["forward", "charge", "#1", StepStatus.RETRY],
        ["forward", "charge", "#2", StepStatus.RETRY],
        ["forward", "charge", "#3", StepStatus.RETRY],
        ["forward", "charge", "#4", StepStatus.FAILED],
    ]
    assert all("charge is blocked until released" in line for line in journal[2:])
