"""Reads of engine state."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery, prefetch_related_objects
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from orchestrator.engine.definition import registry
from orchestrator.engine.errors import UnknownWorkflow
from orchestrator.engine.models import ACTIVE_PHASES, WAITING_PHASES, Phase, StepRun, WorkflowRun, WorkflowTransition


def run_for_user(*, run_id: uuid.UUID, user: Any) -> WorkflowRun | None:
    """A run the user may see: staff see every run, API clients the runs they started and those
    their kind's `readable_by` lets them read (a rebalance of a vault granted to them).
    Anything else is reported as missing, never as forbidden (docs/api.md: 404 for
    another client's objects, so ids of others' runs cannot be probed)."""
    run = WorkflowRun.objects.filter(pk=run_id).first()
    if run is None or not _readable(run, user):
        return None
    prefetch_related_objects([run], Prefetch("steps", queryset=StepRun.objects.order_by("id")))
    return run


def _readable(run: WorkflowRun, user: Any) -> bool:
    if user.is_staff or (run.owner_id is not None and run.owner_id == user.pk):
        return True
    try:
        workflow = registry.get(run.kind)
    except UnknownWorkflow:
        return False
    return workflow.readable_by is not None and workflow.readable_by(run, user)


def runs_by_kind_and_phase() -> list[dict[str, Any]]:
    rows = WorkflowRun.objects.values("kind", "phase").annotate(count=Count("id")).order_by("kind", "phase")
    return [dict(row) for row in rows]


def runs_stalled(*, now: datetime | None = None) -> QuerySet[WorkflowRun]:
    """The two-threshold stall rule: a run is stalled when it has been pending for longer than
    WORKFLOW_STALL_PENDING_SECONDS and has not mutated for longer than
    WORKFLOW_STALL_NO_MUTATION_SECONDS, and no live lease says a worker is on it. Evaluated
    at query time, on every read, with nothing cached.

    Pending: in an active or waiting phase with its step due (due_at passed), created longer
    ago than the first threshold. A run waiting for a later timer is not pending yet, and one
    parked on an event (due_at null: a proposal waiting for its approvers) is waiting for people,
    which the proposal alerts watch instead. Mutated: its last journal entry started or finished,
    or its last phase change. The sweep's re-dispatch writes neither, so a run re-sent every two
    minutes to workers that never take it still counts as stalled. Wider than what the sweep
    re-dispatches: a due timer nobody picked up (beat is down) counts too."""
    now = now or timezone.now()
    pending_since = now - timedelta(seconds=settings.WORKFLOW_STALL_PENDING_SECONDS)
    quiet_since = now - timedelta(seconds=settings.WORKFLOW_STALL_NO_MUTATION_SECONDS)
    steps = StepRun.objects.filter(run=OuterRef("pk")).order_by("-id")
    last_transition = WorkflowTransition.objects.filter(run=OuterRef("pk")).order_by("-id").values("created_at")[:1]
    return (
        WorkflowRun.objects.filter(
            phase__in=[*ACTIVE_PHASES, *WAITING_PHASES], due_at__lte=now, created_at__lte=pending_since
        )
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .annotate(
            mutated_at=Greatest(
                "created_at",
                Coalesce(Subquery(steps.values("started_at")[:1]), "created_at"),
                Coalesce(Subquery(steps.values("finished_at")[:1]), "created_at"),
                Coalesce(Subquery(last_transition), "created_at"),
            )
        )
        .filter(mutated_at__lte=quiet_since)
        .order_by("due_at")
    )


def runs_dead_lettered() -> QuerySet[WorkflowRun]:
    return WorkflowRun.objects.filter(phase=Phase.DEAD_LETTER).order_by("-updated_at")


def runs_active_by_kind_and_phase() -> list[dict[str, Any]]:
    """Counts of runs that still have work ahead (active or waiting), for the dashboard."""
    rows = (
        WorkflowRun.objects.filter(phase__in=[*ACTIVE_PHASES, *WAITING_PHASES])
        .values("kind", "phase")
        .annotate(count=Count("id"))
        .order_by("kind", "phase")
    )
    return [dict(row) for row in rows]
