"""The sweep: what makes a run independent of any one broker message."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator.engine.definition import registry
from orchestrator.engine.models import ACTIVE_PHASES, WAITING_PHASES, WorkflowRun
from orchestrator.engine.services.dispatch import IMMEDIATE
from orchestrator.engine.services.leases import lease_locks_held, server_started

logger = logging.getLogger("orchestrator.engine")


@dataclass(frozen=True)
class SweepResult:
    due: int
    stalled: int
    orphaned: int = 0  # leases whose worker died, taken back before their time


def workflow_sweep(*, stall_seconds: float | None = None, limit: int | None = None) -> SweepResult:
    """Dispatches runs whose timer is due, takes back leases whose worker died, and
    re-dispatches stalled runs.

    A lease is orphaned when its holder's session no longer holds its lock (leases.py): the
    run is dispatched again at once, without waiting for the lease or the stall rule. A run is
    stalled when its step was dispatched but has not finished stall_seconds after it was due,
    and no live lease or row lock says a worker is on it: a lost message, or a worker killed
    in an atomic step (whose message was taken). SKIP LOCKED lets several beats sweep at once
    without waiting on each other or on a step in progress."""
    stall = timedelta(seconds=stall_seconds if stall_seconds is not None else settings.WORKFLOW_STALL_SECONDS)
    now = timezone.now()
    due_timer = Q(dispatched_at__isnull=True, due_at__lte=now)
    stalled = Q(dispatched_at__isnull=False, due_at__lte=now - stall)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    counts = {"due": 0, "stalled": 0}
    with transaction.atomic():
        counts["orphaned"] = _orphans_reclaim(now, limit or settings.WORKFLOW_SWEEP_BATCH)
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


def _orphans_reclaim(now: datetime, limit: int) -> int:
    """Dispatches again, at once, the runs whose lease has not run out but whose holder died.

    Under the rows' locks (SKIP LOCKED: a run being recorded is not orphaned), so no claim or
    record of these runs moves between reading the lease and looking at its lock; a holder that
    recorded has cleared its lease before giving its lock back."""
    runs = list(
        WorkflowRun.objects.select_for_update(skip_locked=True)
        .filter(phase__in=[*ACTIVE_PHASES, *WAITING_PHASES], lease_until__gte=now, lease_lock__isnull=False)
        .order_by("lease_until")[:limit]
    )
    if not runs:
        return 0
    started = server_started()
    # A lease taken before a restart or failover lost its lock with every session: not proof.
    believed = [run for run in runs if run.lease_server == started]
    held = lease_locks_held(run.lease_lock for run in believed if run.lease_lock is not None)
    orphaned = [run for run in believed if run.lease_lock not in held]
    for run in orphaned:
        logger.warning(
            "workflow %s %s: the worker holding %s (%s) is gone; taking its lease back",
            run.kind,
            run.id,
            run.step_name,
            run.lease_owner or "unknown",
        )
        # Expired, not dropped: the next claim closes that attempt's journal row, and the dead
        # attempt, were it alive after all, finds its lease changed and drops its outcome.
        run.lease_until = now
        run.lease_lock = run.lease_server = None
        IMMEDIATE.dispatch(run, registry.get(run.kind), delay=0.0)
    return len(orphaned)
