"""Reads of engine state."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Prefetch, Q, QuerySet, prefetch_related_objects
from django.utils import timezone

from orchestrator.engine.definition import registry
from orchestrator.engine.errors import UnknownWorkflow
from orchestrator.engine.models import ACTIVE_PHASES, WAITING_PHASES, Phase, StepRun, WorkflowRun


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
    """Runs whose step was due more than WORKFLOW_STALL_SECONDS ago and that no live lease says a
    worker is on. Wider than what the sweep re-dispatches: a due timer nobody picked up (beat is
    down) counts too, because to an operator that run is just as stuck."""
    now = now or timezone.now()
    stall = now - timedelta(seconds=settings.WORKFLOW_STALL_SECONDS)
    return (
        WorkflowRun.objects.filter(phase__in=[*ACTIVE_PHASES, *WAITING_PHASES], due_at__lte=stall)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
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
