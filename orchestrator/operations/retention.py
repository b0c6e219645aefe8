"""Retention: what is old and finished is deleted, in small batches (docs/operations.md, "Retention").

What counts as old, per kind (a period of 0 days keeps the kind for ever):
- a firing: created more than RETENTION_FIRINGS_DAYS ago, its outcome known (not pending), its
  report not pending, no delivery due (`next_attempt_at` empty) or leased, and its execution run,
  if any, final (a dead-lettered run may be replayed and reads its firing);
- a step journal row: its run is completed, failed or blocked (never running, waiting or
  dead-lettered: replay reads the journal) and finished more than RETENTION_STEP_JOURNAL_DAYS ago;
- an idempotency answer: older than RETENTION_IDEMPOTENCY_DAYS (whole days, so never inside the
  API's one-day replay promise);
- an audit entry older than RETENTION_AUDIT_DAYS: a transition of a run that is final and finished
  that long ago (replay reads a dead-lettered run's transitions), an approver's decision on a
  proposal that is closed, an admin log entry. Deleted only once exported (retention_audit.py).

How, and why it does not get in anyone's way: every batch is its own short transaction that
locks only the rows it deletes, with FOR UPDATE SKIP LOCKED, so a second pruner (a second beat, a
manual run) skips them instead of waiting, and the live code never waits on a pruner for longer
than one batch. Each batch walks an index from where the last one stopped (a keyset: the primary
key for the tables whose ids grow with time, the firings' (status, created_at) index for theirs),
so it costs O(batch) whatever the table's size and never re-reads the dead rows the batches
before it left for VACUUM. A run stops at RETENTION_MAX_ROWS per kind or RETENTION_MAX_SECONDS
in all; the next run goes on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from orchestrator.automations.models import FiringStatus
from orchestrator.operations.retention_audit import AUDIT_SOURCES, AuditSource, audit_batch_prune
from orchestrator.operations.retention_window import FINAL_SQL, RUN_FINAL_SQL, RUN_JOIN, IdKind, kind_window

logger = logging.getLogger("orchestrator.operations.retention")

PROGRESS_SECONDS = 10.0
# The firing statuses that are an outcome; `pending` is still being delivered.
FIRING_OUTCOMES = tuple(s for s in FiringStatus.values if s != FiringStatus.PENDING)


STEP_JOURNAL = IdKind("step_journal", "orchestrator_steprun", "started_at", RUN_JOIN, RUN_FINAL_SQL)
IDEMPOTENCY = IdKind("idempotency", "orchestrator_idempotencyrecord", "created_at")


@dataclass
class Budget:
    """What one run may still spend: rows per kind, seconds in all."""

    max_rows: int
    deadline: float

    def spent(self, rows: int) -> bool:
        return rows >= self.max_rows or time.monotonic() >= self.deadline


@dataclass
class Pruned:
    """A run's outcome: rows deleted per kind, audit files written, kinds with more left."""

    deleted: dict[str, int] = field(default_factory=dict)
    exported_files: int = 0
    more_left: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)  # the run's time was up before them
    busy: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        left = len(self.more_left) + len(self.not_reached)
        return {**self.deleted, "audit_files": self.exported_files, "more_left": left}


def _cutoff(days: int, now: datetime) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def retention_prune(
    *,
    now: datetime | None = None,
    batch: int | None = None,
    max_rows: int | None = None,
    max_seconds: float | None = None,
    pause: float | None = None,
) -> Pruned:
    """Deletes what is old in every kind, as far as this run's budget goes, and logs one line.
    The arguments override the RETENTION_* settings (tests, the benchmark, the command)."""
    now = now or timezone.now()
    batch = batch or settings.RETENTION_BATCH
    pause = settings.RETENTION_BATCH_PAUSE_SECONDS if pause is None else pause
    budget = Budget(
        max_rows=max_rows or settings.RETENTION_MAX_ROWS,
        deadline=time.monotonic() + (max_seconds or settings.RETENTION_MAX_SECONDS),
    )
    began = time.monotonic()
    result = Pruned()
    kinds: list[tuple[str, int, Callable[[datetime], tuple[int, bool]]]] = [
        ("firings", settings.RETENTION_FIRINGS_DAYS, lambda c: _firings(c, batch, budget, pause)),
        ("step_journal", settings.RETENTION_STEP_JOURNAL_DAYS, lambda c: _by_id(STEP_JOURNAL, c, batch, budget, pause)),
        ("idempotency", settings.RETENTION_IDEMPOTENCY_DAYS, lambda c: _by_id(IDEMPOTENCY, c, batch, budget, pause)),
    ]
    for name, days, prune in kinds:
        cutoff = _cutoff(days, now)
        if cutoff is None:
            continue
        if budget.spent(0):
            result.not_reached.append(name)
            continue
        result.deleted[name], finished = prune(cutoff)
        if not finished:
            result.more_left.append(name)
    audit_cutoff = _cutoff(settings.RETENTION_AUDIT_DAYS, now)
    if audit_cutoff is not None:
        for source in AUDIT_SOURCES:
            if budget.spent(0):
                result.not_reached.append(f"audit_{source.name}")
                continue
            deleted, files, state = _audit(source, audit_cutoff, batch, budget, pause)
            result.deleted[f"audit_{source.name}"] = deleted
            result.exported_files += files
            if state == "busy":
                result.busy.append(source.name)
            elif state == "more":
                result.more_left.append(f"audit_{source.name}")
    logger.info(
        "retention: deleted %s; %d audit files written; %.1f s%s%s%s",
        " ".join(f"{k}={v}" for k, v in result.deleted.items()) or "nothing (every period is 0)",
        result.exported_files,
        time.monotonic() - began,
        f"; more left in {', '.join(result.more_left)}" if result.more_left else "",
        f"; time was up before {', '.join(result.not_reached)}" if result.not_reached else "",
        f"; audit {', '.join(result.busy)} skipped: another pruner is exporting" if result.busy else "",
    )
    return result


class _Progress:
    """A log line every PROGRESS_SECONDS while one kind takes long (a first run on a big table)."""

    def __init__(self, kind: str) -> None:
        self.kind, self.next_at = kind, time.monotonic() + PROGRESS_SECONDS

    def __call__(self, deleted: int) -> None:
        if time.monotonic() >= self.next_at:
            self.next_at = time.monotonic() + PROGRESS_SECONDS
            logger.info("retention: %s: %d deleted so far", self.kind, deleted)


def _firings(cutoff: datetime, batch: int, budget: Budget, pause: float) -> tuple[int, bool]:
    """Walks firing_status_idx (status, created_at DESC) down from the cutoff, one status at a
    time; each batch starts below the oldest row the previous one looked at."""
    deleted, progress = 0, _Progress("firings")
    for status in FIRING_OUTCOMES:
        # A keyset on (created_at, id): firings share timestamps (a dispatch batch creates a
        # thousand in one statement), and a bound on created_at alone skipped the rest of a
        # timestamp a batch cut through.
        bound, bound_id = cutoff, LAST_UUID
        while True:
            if budget.spent(deleted):
                return deleted, False
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(FIRINGS_SQL, {"status": status, "bound": bound, "bound_id": bound_id, "batch": batch})
                seen, gone, oldest, oldest_id = cursor.fetchone()
            deleted += gone
            progress(deleted)
            if seen < batch:
                break
            bound, bound_id = oldest, oldest_id
            time.sleep(pause)
    return deleted, True


LAST_UUID = "ffffffff-ffff-ffff-ffff-ffffffffffff"  # above every id: the first batch starts at the cutoff

FIRINGS_SQL = f"""
WITH win AS (
    SELECT id, created_at FROM automations_firing
    -- PostgreSQL starts the scan of firing_status_idx (status, created_at DESC) at created_at <=
    -- bound, which it derives from the row comparison, and filters the ids of the bound's tie.
    WHERE status = %(status)s AND (created_at, id) < (%(bound)s, %(bound_id)s::uuid)
    ORDER BY created_at DESC, id DESC LIMIT %(batch)s
), victims AS (
    SELECT f.id FROM automations_firing f
    JOIN win ON win.id = f.id
    LEFT JOIN orchestrator_workflowrun r ON r.id = f.workflow_run_id
    WHERE f.status = %(status)s AND f.report_status <> 'pending' AND f.next_attempt_at IS NULL
      AND (f.lease_until IS NULL OR f.lease_until < now())
      AND (f.workflow_run_id IS NULL OR r.phase IN ({FINAL_SQL}))
    FOR UPDATE OF f SKIP LOCKED
), gone AS (
    DELETE FROM automations_firing WHERE id IN (SELECT id FROM victims) RETURNING 1
)
SELECT (SELECT count(*) FROM win), (SELECT count(*) FROM gone), last.created_at, last.id
FROM (SELECT 1) one LEFT JOIN (SELECT created_at, id FROM win ORDER BY created_at, id LIMIT 1) last ON true
"""  # noqa: S608 (constants: the final phases)


def _by_id(kind: IdKind, cutoff: datetime, batch: int, budget: Budget, pause: float) -> tuple[int, bool]:
    """Ids grow with time, so the walk stops at the first window with nothing old in it."""
    deleted, after, progress = 0, 0, _Progress(kind.name)
    while not budget.spent(deleted):
        with transaction.atomic():
            last, aged, ids = kind_window(kind, cutoff=cutoff, after=after, batch=batch)
            if ids:
                with connection.cursor() as cursor:
                    cursor.execute(f"DELETE FROM {kind.table} WHERE id = ANY(%s)", [ids])  # noqa: S608 (a constant)
                    deleted += cursor.rowcount
        if last is None or not aged:
            return deleted, True
        after = last
        progress(deleted)
        time.sleep(pause)
    return deleted, False


def _audit(source: AuditSource, cutoff: datetime, batch: int, budget: Budget, pause: float) -> tuple[int, int, str]:
    """(deleted, files written, "done" | "more" | "busy")."""
    deleted, files, after, progress = 0, 0, 0, _Progress(f"audit {source.name}")
    while not budget.spent(deleted):
        outcome = audit_batch_prune(source, cutoff=cutoff, after=after, batch=batch)
        if outcome is None:
            return deleted, files, "busy"
        deleted += outcome.deleted
        files += 1 if outcome.path is not None else 0
        if outcome.last is None or not outcome.aged:
            return deleted, files, "done"
        after = outcome.last
        progress(deleted)
        time.sleep(pause)
    return deleted, files, "more"
