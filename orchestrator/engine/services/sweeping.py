"""The sweep: what makes a run independent of any one broker message."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator.engine.definition import registry
from orchestrator.engine.models import ACTIVE_PHASES, WAITING_PHASES, WorkflowRun
from orchestrator.engine.services.dispatch import IMMEDIATE

logger = logging.getLogger("orchestrator.engine")


@dataclass(frozen=True)
class SweepResult:
    due: int
    stalled: int


def workflow_sweep(*, stall_seconds: float | None = None, limit: int | None = None) -> SweepResult:
    """Dispatches runs whose timer is due and re-dispatches stalled ones.

    A run is stalled when its step was dispatched but has not finished stall_seconds after it
    was due, and no live lease or row lock says a worker is on it: a lost message, or a worker
    killed mid-step. SKIP LOCKED lets several beats sweep at once without waiting on each other
    or on a step in progress."""
    stall = timedelta(seconds=stall_seconds if stall_seconds is not None else settings.WORKFLOW_STALL_SECONDS)
    now = timezone.now()
    due_timer = Q(dispatched_at__isnull=True, due_at__lte=now)
    stalled = Q(dispatched_at__isnull=False, due_at__lte=now - stall)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    counts = {"due": 0, "stalled": 0}
    with transaction.atomic():
        runs = list(
            WorkflowRun.objects.select_for_update(skip_locked=True)
            .filter(phase__in=[*ACTIVE_PHASES, *WAITING_PHASES])
            .filter(due_timer | stalled)
            .filter(free)
            .order_by("due_at")[: limit or settings.WORKFLOW_SWEEP_BATCH]
        )
        for run in runs:
            kind = "due" if run.dispatched_at is None else "stalled"
            counts[kind] += 1
            if kind == "stalled":
                logger.warning("workflow %s %s stalled at %s, re-dispatching", run.kind, run.id, run.step_name)
            # The expired lease stays: the next claim sees it and closes that attempt's journal row.
            IMMEDIATE.dispatch(run, registry.get(run.kind), delay=0.0)
    return SweepResult(**counts)
