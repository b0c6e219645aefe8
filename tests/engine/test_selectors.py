"""Who may read a run (`run_for_user`, what GET /v1/workflows/{id} answers): its owner, staff,
and whoever its kind's `readable_by` names; nobody else, whatever the kind."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.engine import Step, Workflow, registry
from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.selectors import run_for_user
from tests.factories import StepRunFactory, UserFactory, WorkflowRunFactory

pytestmark = pytest.mark.django_db


def _readable_by(run: WorkflowRun, user: Any) -> bool:
    return user.username in run.input.get("readers", [])


registry.register(Workflow(kind="test.shared", steps=(Step("only", lambda ctx: {}),), readable_by=_readable_by))
registry.register(Workflow(kind="test.private", steps=(Step("only", lambda ctx: {}),)))


@pytest.mark.parametrize("kind", ["test.shared", "test.private", "test.unregistered"])
def test_the_owner_and_staff_read_a_run_of_any_kind_and_a_stranger_none(kind: str) -> None:
    owner, stranger, staff = UserFactory.create(), UserFactory.create(), UserFactory.create(staff=True)
    run = WorkflowRunFactory.create(kind=kind, owner=owner, step_name="only")
    StepRunFactory.create(run=run, name="only")
    for user in (owner, staff):
        seen = run_for_user(run_id=run.id, user=user)
        assert seen == run
        assert [step.name for step in seen.steps.all()] == ["only"]  # with its journal
    assert run_for_user(run_id=run.id, user=stranger) is None


def test_a_kind_lets_the_users_its_readable_by_names_read_a_run_they_did_not_start() -> None:
    reader, stranger = UserFactory.create(username="reader"), UserFactory.create()
    shared = WorkflowRunFactory.create(kind="test.shared", input={"readers": ["reader"]}, step_name="only")
    private = WorkflowRunFactory.create(kind="test.private", input={"readers": ["reader"]}, step_name="only")
    assert shared.owner is None
    assert run_for_user(run_id=shared.id, user=reader) == shared
    assert run_for_user(run_id=shared.id, user=stranger) is None
    assert run_for_user(run_id=private.id, user=reader) is None  # no readable_by: owner and staff only
