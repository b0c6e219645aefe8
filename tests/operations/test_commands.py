"""The operator's commands: create_api_client and workflows list|show|replay."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from tests.support import control
from tests.support.models import Effect
from tests.support.runs import dead_lettered_run, reach

User = get_user_model()


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def make_run(phase: str, *, kind: str = "test.effects", **fields: Any) -> WorkflowRun:
    return WorkflowRun.objects.create(
        kind=kind,
        idempotency_key=f"key-{uuid.uuid4()}",
        correlation_id=uuid.uuid4().hex,
        phase=phase,
        step_name="send",
        **fields,
    )


# --- create_api_client ------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_prints_a_40_character_token_that_authenticates_against_the_api() -> None:
    out, err = run_command("create_api_client", "acme-bot")
    token = out.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", token), out
    assert "acme-bot" in err  # the human sentence goes to stderr, stdout is just the token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.get(f"/v1/workflows/{uuid.uuid4()}")
    assert response.status_code == 404  # authenticated: the run is missing, not the client
    assert response.json()["error"]["code"] == "not_found"

    user = User.objects.get(username="acme-bot")
    assert not user.is_staff
    assert not user.has_usable_password()


@pytest.mark.django_db
def test_it_returns_the_same_token_when_run_twice_for_one_name() -> None:
    first, _ = run_command("create_api_client", "acme-bot")
    second, err = run_command("create_api_client", "acme-bot")
    assert first == second
    assert "Existing" in err
    assert User.objects.filter(username="acme-bot").count() == 1
    assert Token.objects.filter(user__username="acme-bot").count() == 1


@pytest.mark.django_db
def test_it_strips_the_name_so_padding_does_not_make_a_second_client() -> None:
    first, _ = run_command("create_api_client", "acme-bot")
    second, _ = run_command("create_api_client", "  acme-bot ")
    assert first == second


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "   ", "x" * 151])
def test_it_refuses_an_empty_or_overlong_name(name: str) -> None:
    with pytest.raises(CommandError, match="NAME"):
        run_command("create_api_client", name)
    assert not Token.objects.exists()


@pytest.mark.django_db
def test_it_makes_a_staff_client_that_reads_every_run() -> None:
    out, _ = run_command("create_api_client", "ops", "--staff")
    run = make_run(Phase.COMPLETED)  # owned by nobody
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {out.strip()}")
    response = client.get(f"/v1/workflows/{run.id}")
    assert response.status_code == 200
    assert response.json()["id"] == str(run.id)


@pytest.mark.django_db(transaction=True)
def test_it_prints_only_the_token_on_the_real_stdout(worker_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_client", "shell-bot"],
        cwd=settings.BASE_DIR,
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9a-f]{40}\n", result.stdout), result.stdout
    assert Token.objects.get(user__username="shell-bot").key == result.stdout.strip()


# --- workflows ------------------------------------------------------------------------------


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
