"""The operations dashboard in the admin: what it shows, who may see it, Replay and Discard."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import ERROR, SUCCESS, WARNING, get_messages
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from orchestrator.engine.models import Phase, WorkflowRun
from tests.factories import HeartbeatFactory, NodeChainFactory, SigningKeyFactory, UserFactory
from tests.support import control
from tests.support.models import Effect
from tests.support.relays import funded_signer
from tests.support.runs import dead_lettered_run, make_run, reach

User = get_user_model()

DASHBOARD = "/admin/operations/"


def replay_url(run: WorkflowRun) -> str:
    return f"{DASHBOARD}runs/{run.id}/replay"


def discard_url(run: WorkflowRun) -> str:
    return f"{DASHBOARD}runs/{run.id}/discard"


def notes(response: Any) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def operator() -> Any:
    return UserFactory.create(superuser=True, username="operator", email="op@example.com", password="x")


@pytest.fixture
def browser(operator: Any) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def staff_with(*codenames: str) -> Client:
    user = UserFactory.create(staff=True, username=f"staff-{len(codenames)}", password="x")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="orchestrator", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


# --- what it shows --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_shows_runs_queues_low_signers_and_heartbeats_to_staff(
    browser: Client, anvil: str, settings: Any
) -> None:
    # Both stall thresholds at 0: a run whose step is due and that no worker holds counts at once
    # (tests/engine/test_stall_rule.py tests the thresholds themselves).
    settings.WORKFLOW_STALL_PENDING_SECONDS = settings.WORKFLOW_STALL_NO_MUTATION_SECONDS = 0
    NodeChainFactory.create(rpc_url=anvil)
    empty = SigningKeyFactory.create(label="empty")
    rich = funded_signer(anvil)
    dead = make_run(Phase.DEAD_LETTER, error="charge: card processor unreachable")
    hour_ago = timezone.now() - timedelta(hours=1)
    stalled = make_run(Phase.SUBMITTING, kind="test.leased", due_at=hour_ago, dispatched_at=hour_ago)
    make_run(Phase.CONFIRMING, kind="relay.batch", due_at=timezone.now() + timedelta(seconds=5))
    make_run(Phase.COMPLETED)
    HeartbeatFactory.create(name="beat", at=timezone.now() - timedelta(seconds=3))
    HeartbeatFactory.create(name="worker:w1@host-a")

    response = browser.get(DASHBOARD)
    assert response.status_code == 200
    page = response.content.decode()
    active = response.context["overview"].active
    assert {(r["kind"], r["phase"], r["count"]) for r in active} == {
        ("test.leased", "submitting", 1),
        ("relay.batch", "confirming", 1),
    }
    assert 'id="ops-stalled"' in page and str(stalled.id) in page
    assert response.context["overview"].stalled_count == 1
    assert 'id="ops-dead-letters"' in page and str(dead.id) in page and "card processor unreachable" in page
    assert f'action="{replay_url(dead)}"' in page and f'action="{discard_url(dead)}"' in page
    assert "csrfmiddlewaretoken" in page
    assert set(response.context["overview"].queues) == {"workflows", "triggers", "relay"}
    assert empty.address in page and rich.address not in page
    assert "worker w1@host-a" in page and 'id="ops-beat"' in page
    assert "window.location.reload" in page  # it refreshes itself


@pytest.mark.django_db
def test_the_admin_index_links_to_the_dashboard_and_the_audit_export(browser: Client) -> None:
    page = browser.get("/admin/").content.decode()
    assert f'href="{DASHBOARD}"' in page
    assert f'href="{DASHBOARD}audit/"' in page


# --- who may see and act --------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_is_refused_to_anyone_but_staff_with_the_permission() -> None:
    run = make_run(Phase.DEAD_LETTER)
    anonymous = Client().get(DASHBOARD)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")

    outsider = UserFactory.create(username="outsider", password="x")
    client = Client()
    client.force_login(outsider)
    assert client.get(DASHBOARD).status_code == 302
    assert client.post(replay_url(run)).status_code == 302

    assert staff_with().get(DASHBOARD).status_code == 403
    run.refresh_from_db()
    assert run.phase == Phase.DEAD_LETTER


@pytest.mark.django_db
def test_a_viewer_sees_the_dashboard_without_replay_or_discard_and_cannot_post_them() -> None:
    run = make_run(Phase.DEAD_LETTER)
    viewer = staff_with("view_workflowrun")
    page = viewer.get(DASHBOARD)
    assert page.status_code == 200 and str(run.id) in page.content.decode()
    assert "Replay" not in page.content.decode()
    assert viewer.post(replay_url(run)).status_code == 403
    assert viewer.post(discard_url(run), {"reason": "because"}).status_code == 403
    run.refresh_from_db()
    assert run.phase == Phase.DEAD_LETTER


@pytest.mark.django_db
def test_replay_and_discard_take_only_a_post_with_a_csrf_token(operator: Any) -> None:
    run = make_run(Phase.DEAD_LETTER)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.get(replay_url(run)).status_code == 405
    assert client.post(replay_url(run)).status_code == 403
    assert client.post(discard_url(run), {"reason": "because"}).status_code == 403
    run.refresh_from_db()
    assert run.phase == Phase.DEAD_LETTER


# --- discard --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_discard_needs_a_reason(browser: Client) -> None:
    run = make_run(Phase.DEAD_LETTER)
    response = browser.post(discard_url(run), {"reason": "   "}, follow=True)
    assert notes(response) == [(ERROR, "Not discarded: a discard needs a reason.")]
    run.refresh_from_db()
    assert run.phase == Phase.DEAD_LETTER
    assert not LogEntry.objects.exists()


@pytest.mark.django_db
def test_discard_ends_the_run_as_failed_with_the_reason_in_the_audit_trail(browser: Client, operator: Any) -> None:
    run = make_run(Phase.DEAD_LETTER, error="charge: card processor unreachable")
    response = browser.post(discard_url(run), {"reason": "refunded by hand, ticket 812"}, follow=True)
    assert response.status_code == 200
    assert notes(response) == [(SUCCESS, f"Discarded test.effects {run.id}: it is now failed.")]

    run.refresh_from_db()
    assert run.phase == Phase.FAILED and run.finished_at is not None and run.due_at is None
    assert run.error == "charge: card processor unreachable"  # what went wrong stays
    last = run.transitions.order_by("-id").first()
    assert last is not None
    assert (last.from_phase, last.to_phase, last.actor) == (Phase.DEAD_LETTER, Phase.FAILED, "admin:operator")
    assert last.reason == "discarded: refunded by hand, ticket 812"
    entry = LogEntry.objects.get()
    assert (entry.user, entry.action_flag, entry.object_id) == (operator, CHANGE, str(run.id))
    assert "refunded by hand" in entry.change_message

    again = browser.post(discard_url(run), {"reason": "twice"}, follow=True)
    assert notes(again)[0][0] == WARNING
    assert run.transitions.count() == 3


@pytest.mark.django_db
def test_the_cli_discards_a_dead_lettered_run_and_refuses_any_other() -> None:
    dead, done = make_run(Phase.DEAD_LETTER), make_run(Phase.COMPLETED)
    out = StringIO()
    call_command("workflows", "discard", str(dead.id), "--reason", "duplicate order", stdout=out)
    assert "Discarded" in out.getvalue()
    last = WorkflowRun.objects.get(pk=dead.id).transitions.order_by("-id").first()
    assert last is not None and (last.actor, last.reason) == ("cli", "discarded: duplicate order")
    with pytest.raises(CommandError, match="only dead-letter runs"):
        call_command("workflows", "discard", str(done.id), "--reason", "x")


# --- replay, on a real worker ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.engine
def test_replay_from_the_dashboard_completes_a_dead_lettered_run(worker: object, browser: Client) -> None:
    dead = dead_lettered_run()
    page = browser.get(DASHBOARD).content.decode()
    assert str(dead.id) in page
    control.signal(f"release:{dead.id}")  # the operator fixed the root cause

    response = browser.post(replay_url(dead), follow=True)
    assert notes(response) == [(SUCCESS, f"Replayed test.effects {dead.id}; it continues at charge.")]
    done = reach(dead.id)
    replayed = done.transitions.get(reason="replayed")
    assert (replayed.from_phase, replayed.actor) == (Phase.DEAD_LETTER, "admin:operator")
    assert sorted(Effect.objects.filter(run_id=dead.id).values_list("name", flat=True)) == sorted(
        ["reserve", "no_undo", "charge", "send"]
    )
    assert LogEntry.objects.get(object_id=str(dead.id)).change_message.startswith("Replayed")
    assert dead.id not in [r.id for r in browser.get(DASHBOARD).context["overview"].dead_letters]
