"""Reads of engine state."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count, Prefetch

from orchestrator.models import StepRun, WorkflowRun


def run_for_user(*, run_id: uuid.UUID, user: Any) -> WorkflowRun | None:
    """A run the user may see: staff see every run, API clients the runs they started.
    Anything else is reported as missing, never as forbidden (API.md: 404 for others' objects)."""
    runs = WorkflowRun.objects.prefetch_related(Prefetch("steps", queryset=StepRun.objects.order_by("id")))
    if not user.is_staff:
        runs = runs.filter(owner=user)
    return runs.filter(pk=run_id).first()


def runs_by_kind_and_phase() -> list[dict[str, Any]]:
    rows = WorkflowRun.objects.values("kind", "phase").annotate(count=Count("id")).order_by("kind", "phase")
    return [dict(row) for row in rows]
