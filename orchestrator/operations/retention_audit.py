"""Audit entries leave the database only through a file (docs/operations.md, "Retention").

One batch is one transaction under audit_prune() (orchestrator/infra/audit_guard.py): it chooses
and locks the batch's rows, writes exactly their entries as JSON lines (the audit export's
fields, audit_jsonl) to a new file, fsyncs the file and its directory, and only then deletes the
rows; the commit follows. A crash anywhere before the commit leaves every row in place, so the
next run exports them again: no entry is deleted unexported.

The file is named after the batch's first row (its time, its source and its id). A rerun after a
crash that picks the same first row writes the same name again, whole (written aside, then
renamed over it); once a batch commits its first row is gone, so no later batch can take the
name of a file whose rows are deleted. Exports are serialized by a transaction-level advisory
lock: a second pruner that finds it taken skips the audit this run rather than export the same
rows twice."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.db import connection

from approvals.models import Approval, ProposalStatus
from orchestrator.engine.models import WorkflowTransition
from orchestrator.infra.audit_guard import audit_prune
from orchestrator.operations.audit import AuditEntry, audit_entries_of, audit_jsonl
from orchestrator.operations.retention_window import RUN_FINAL_SQL, RUN_JOIN, IdKind, kind_window

# pg_try_advisory_xact_lock key: "audit export" serialized across pruners (ASCII "vo-audit").
EXPORT_LOCK = 0x766F2D6175646974
# A decision is prunable once its proposal is closed; `approved` may still be executing.
CLOSED_PROPOSALS = ", ".join(
    f"'{s}'"
    for s in (ProposalStatus.EXECUTED, ProposalStatus.REJECTED, ProposalStatus.EXPIRED, ProposalStatus.CANCELLED)
)


@dataclass(frozen=True)
class AuditSource:
    name: str  # the export's `source`: transition | approval | admin
    kind: IdKind
    rows: Callable[[list[int]], dict[str, Any]]  # ids -> audit_entries_of's arguments


AUDIT_SOURCES = (
    AuditSource(
        "transition",
        IdKind("audit_transition", "orchestrator_workflowtransition", "created_at", RUN_JOIN, RUN_FINAL_SQL),
        lambda ids: {"transitions": WorkflowTransition.objects.filter(id__in=ids)},
    ),
    AuditSource(
        "approval",
        IdKind(
            "audit_approval",
            "approvals_approval",
            "decided_at",
            "JOIN approvals_rebalanceproposal p ON p.id = t.proposal_id",
            f"p.status IN ({CLOSED_PROPOSALS})",
        ),
        lambda ids: {"approvals": Approval.objects.filter(id__in=ids)},
    ),
    AuditSource(
        "admin",
        IdKind("audit_admin", "django_admin_log", "action_time"),
        lambda ids: {"admin": LogEntry.objects.filter(id__in=ids)},
    ),
)


@dataclass(frozen=True)
class AuditBatch:
    last: int | None  # the last id the batch's window looked at (None: nothing after `after`)
    aged: bool  # the window still held rows older than the cutoff
    deleted: int
    path: Path | None  # the file written, if the batch had rows to delete


def audit_batch_prune(source: AuditSource, *, cutoff: datetime, after: int, batch: int) -> AuditBatch | None:
    """Exports and deletes one batch of `source` after id `after`. None: another pruner holds the
    export lock. Raises OSError if the file cannot be written (nothing is deleted then)."""
    with audit_prune():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [EXPORT_LOCK])
            (locked,) = cursor.fetchone()
        if not locked:
            return None
        last, aged, ids = kind_window(source.kind, cutoff=cutoff, after=after, batch=batch)
        if not ids:
            return AuditBatch(last=last, aged=aged, deleted=0, path=None)
        entries = list(audit_entries_of(**source.rows(ids)))
        if len(entries) != len(ids):  # a row without its entry must never be deleted
            raise RuntimeError(f"audit {source.name}: {len(ids)} rows locked but {len(entries)} entries read")
        path = export_path(entries[0], source.name, ids[0])
        _write_synced(path, entries)
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {source.kind.table} WHERE id = ANY(%s)", [ids])  # noqa: S608 (a constant)
            deleted = cursor.rowcount
    return AuditBatch(last=last, aged=aged, deleted=deleted, path=path)


def export_path(first: AuditEntry, source: str, first_id: int) -> Path:
    at = first.at.astimezone(UTC)
    return (
        Path(settings.RETENTION_EXPORT_DIR) / f"{at:%Y-%m}" / f"audit-{at:%Y%m%dT%H%M%S%fZ}-{source}-{first_id}.jsonl"
    )


def _write_synced(path: Path, entries: list[AuditEntry]) -> None:
    """The file's bytes and its name are on disk when this returns (fsync of the file, then of
    the directory that holds the rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(path.name + ".partial")
    with aside.open("w", encoding="utf-8") as out:
        out.writelines(audit_jsonl(iter(entries)))
        out.flush()
        os.fsync(out.fileno())
    os.replace(aside, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
