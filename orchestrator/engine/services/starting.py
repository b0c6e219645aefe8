"""Starting a workflow run."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestrator.engine.definition import Workflow, registry
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services.dispatch import ENGINE, IMMEDIATE, transition
from orchestrator.infra.observability import current_correlation_id, new_correlation_id

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def workflow_start(
    *,
    kind: str,
    input: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    deadline_seconds: float | None = None,
    owner: User | None = None,
    new_key: bool = False,
) -> tuple[WorkflowRun, bool]:
    """Creates a run and enqueues its first step after commit.

    Returns (run, created). The same idempotency key returns the existing run and starts
    nothing. Raises UnknownWorkflow for an unregistered kind.

    With new_key the caller vouches that no run has the key yet (it names a row made in the
    caller's transaction, or a fresh uuid): the insert goes without the savepoint that catches
    a lost race (two round trips, on the path of every feed), and a duplicate would fail the
    caller's transaction instead."""
    workflow = registry.get(kind)
    key = idempotency_key or f"{kind}:{uuid.uuid4()}"
    cid = correlation_id or (current_correlation_id() if current_correlation_id() != "-" else "")
    now = timezone.now()
    run = WorkflowRun(
        kind=kind,
        idempotency_key=key,
        correlation_id=cid or new_correlation_id(),
        input=input or {},
        step_name=workflow.steps[0].name,
        deadline=now + timedelta(seconds=deadline_seconds) if deadline_seconds else None,
        owner=owner,
    )
    if new_key or idempotency_key is None:
        with transaction.atomic(savepoint=False):
            _insert(run, workflow)
        return run, True
    try:
        with transaction.atomic():
            _insert(run, workflow)
    except IntegrityError:
        # Lost the race on the unique idempotency key (or it existed already): same run.
        return WorkflowRun.objects.get(idempotency_key=key), False
    return run, True


def _insert(run: WorkflowRun, workflow: Workflow) -> None:
    # The due time and the message are set before the insert, which writes them: save=False.
    IMMEDIATE.dispatch(run, workflow, delay=0.0, save=False)
    run.save(force_insert=True)
    transition(run, "", Phase.SUBMITTING, reason="started", actor=ENGINE)
