"""The engine's admin: runs by phase, the journal and transitions, replay, an immutable trail."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import WARNING, get_messages
from django.test import Client, RequestFactory

from orchestrator.engine.models import (
    AppendOnlyError,
    Phase,
    WorkflowRun,
    WorkflowTransition,
)
from tests.support import control
from tests.support.models import Effect
from tests.support.runs import dead_lettered_run, make_run, reach

User = get_user_model()

CHANGELIST = "/admin/orchestrator/workflowrun/"
TRANSITIONS = "/admin/orchestrator/workflowtransition/"


@pytest.fixture
def staff() -> Any:
    return User.objects.create_superuser(username="operator", email="op@example.com", password="x")


@pytest.fixture
def browser(staff: Any) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def replay_action(browser: Client, *runs: WorkflowRun) -> Any:
    return browser.post(
        CHANGELIST,
        {"action": "replay", "_selected_action": [str(r.id) for r in runs]},
        follow=True,
    )


# --- runs -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_lists_runs_filtered_by_phase(browser: Client) -> None:
    dead = make_run(Phase.DEAD_LETTER)
    done = make_run(Phase.COMPLETED)
    response = browser.get(CHANGELIST, {"phase__exact": Phase.DEAD_LETTER})
    assert response.status_code == 200
    html = response.content.decode()
    assert str(dead.id) in html
    assert str(done.id) not in html
    assert "Replay selected dead-lettered runs" in html

    everything = browser.get(CHANGELIST).content.decode()
    assert str(dead.id) in everything and str(done.id) in everything


@pytest.mark.django_db
def test_it_searches_runs_by_idempotency_key(browser: Client) -> None:
    wanted = make_run(Phase.COMPLETED, idempotency_key="order-4242")
    other = make_run(Phase.COMPLETED)
    html = browser.get(CHANGELIST, {"q": "order-4242"}).content.decode()
    assert str(wanted.id) in html and str(other.id) not in html


@pytest.mark.django_db
def test_it_shows_a_run_with_its_journal_and_transitions(browser: Client) -> None:
    run = make_run(Phase.DEAD_LETTER, error="charge: card processor unreachable")
    response = browser.get(f"{CHANGELIST}{run.id}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    # The journal inline.
    assert "r-17" in html
    assert "card processor unreachable" in html
    assert "reserve" in html and "charge" in html
    # The transitions inline.
    assert "moved to dead-letter by the test" in html
    # Nothing on the page lets the operator edit or delete the record.
    assert 'name="_save"' not in html
    assert "deletelink" not in html


@pytest.mark.django_db
def test_it_offers_no_add_or_delete_for_runs(browser: Client) -> None:
    run = make_run(Phase.COMPLETED)
    assert browser.get(f"{CHANGELIST}add/").status_code == 403
    assert browser.get(f"{CHANGELIST}{run.id}/delete/").status_code == 403
    assert browser.post(f"{CHANGELIST}{run.id}/delete/", {"post": "yes"}).status_code == 403
    assert WorkflowRun.objects.filter(pk=run.id).exists()


@pytest.mark.django_db
def test_it_refuses_an_edit_posted_to_a_run(browser: Client) -> None:
    run = make_run(Phase.DEAD_LETTER)
    page = browser.get(f"{CHANGELIST}{run.id}/change/").content.decode()
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)"[^>]*value="([^"]*)"', page))
    response = browser.post(f"{CHANGELIST}{run.id}/change/", {**form, "phase": Phase.COMPLETED, "_save": "Save"})
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.phase == Phase.DEAD_LETTER
    assert not LogEntry.objects.exists()


@pytest.mark.django_db
def test_a_staff_member_with_view_permission_only_sees_runs_but_cannot_replay_them() -> None:
    viewer = User.objects.create_user(username="viewer", password="x", is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="orchestrator",
            codename__in=["view_workflowrun", "view_steprun", "view_workflowtransition"],
        )
    )
    client = Client()
    client.force_login(viewer)
    run = make_run(Phase.DEAD_LETTER)

    listing = client.get(CHANGELIST)
    assert listing.status_code == 200
    assert str(run.id) in listing.content.decode()
    assert "Replay selected dead-lettered runs" not in listing.content.decode()
    page = client.get(f"{CHANGELIST}{run.id}/change/")
    assert page.status_code == 200
    assert "moved to dead-letter by the test" in page.content.decode()

    replay_action(client, run)
    run.refresh_from_db()
    assert run.phase == Phase.DEAD_LETTER
    assert not run.transitions.filter(reason="replayed").exists()


@pytest.mark.django_db
def test_the_replay_action_leaves_a_completed_run_alone_with_a_warning(browser: Client) -> None:
    run = make_run(Phase.COMPLETED)
    response = replay_action(browser, run)
    assert response.status_code == 200
    notes = [(m.level, str(m)) for m in get_messages(response.wsgi_request)]
    assert notes == [(WARNING, "1 run(s) were not in dead-letter and were left alone.")]
    run.refresh_from_db()
    assert run.phase == Phase.COMPLETED
    assert run.transitions.count() == 2  # no "replayed" transition


@pytest.mark.django_db(transaction=True)
@pytest.mark.engine
def test_the_replay_action_moves_a_dead_lettered_run_back_and_it_completes(worker: object, browser: Client) -> None:
    dead = dead_lettered_run()
    completed = make_run(Phase.COMPLETED)
    control.signal(f"release:{dead.id}")  # the operator fixed the root cause

    response = replay_action(browser, dead, completed)
    assert response.status_code == 200
    notes = sorted(str(m) for m in get_messages(response.wsgi_request))
    assert notes == ["1 run(s) were not in dead-letter and were left alone.", "Replayed 1 run(s)."]

    done = reach(dead.id)
    replayed = done.transitions.get(reason="replayed")
    assert (replayed.from_phase, replayed.to_phase) == (Phase.DEAD_LETTER, Phase.SUBMITTING)
    assert replayed.actor == "admin:operator"
    assert sorted(Effect.objects.filter(run_id=dead.id).values_list("name", flat=True)) == sorted(
        ["reserve", "no_undo", "charge", "send"]
    )
    assert WorkflowRun.objects.get(pk=completed.id).phase == Phase.COMPLETED


# --- transitions ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_saved_transition_cannot_be_changed() -> None:
    transition = make_run(Phase.DEAD_LETTER).transitions.order_by("id").last()
    assert transition is not None
    transition.reason = "rewritten history"
    with pytest.raises(AppendOnlyError):
        transition.save()
    transition.refresh_from_db()
    assert transition.reason == "moved to dead-letter by the test"


@pytest.mark.django_db
def test_a_saved_transition_cannot_be_deleted() -> None:
    run = make_run(Phase.DEAD_LETTER)
    transition = run.transitions.order_by("id").first()
    assert transition is not None
    with pytest.raises(AppendOnlyError):
        transition.delete()
    assert run.transitions.count() == 2


@pytest.mark.django_db
def test_the_admin_has_no_add_change_or_delete_for_transitions(staff: Any, browser: Client) -> None:
    run = make_run(Phase.DEAD_LETTER)
    transition = run.transitions.order_by("id").last()
    assert transition is not None

    model_admin = admin.site._registry[WorkflowTransition]
    request = RequestFactory().get(TRANSITIONS)
    request.user = staff
    assert model_admin.has_view_permission(request)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, transition)
    assert not model_admin.has_delete_permission(request, transition)
    assert not model_admin.get_actions(request)  # not even the bulk "delete selected"

    listing = browser.get(TRANSITIONS)
    assert listing.status_code == 200
    assert str(run.id) in listing.content.decode()
    assert 'name="_selected_action"' not in listing.content.decode()  # no bulk actions at all
    assert browser.get(f"{TRANSITIONS}add/").status_code == 403
    assert browser.get(f"{TRANSITIONS}{transition.pk}/delete/").status_code == 403
    assert browser.post(f"{TRANSITIONS}{transition.pk}/delete/", {"post": "yes"}).status_code == 403

    page = browser.get(f"{TRANSITIONS}{transition.pk}/change/")
    assert page.status_code == 200  # read-only view
    assert 'name="_save"' not in page.content.decode()
    edit = browser.post(f"{TRANSITIONS}{transition.pk}/change/", {"reason": "rewritten history", "_save": "Save"})
    assert edit.status_code == 403
    transition.refresh_from_db()
    assert transition.reason == "moved to dead-letter by the test"
