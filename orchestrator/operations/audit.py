"""The audit log: every state transition and every human decision, in time order, exportable.

Three append-only sources, read together rather than copied into a table of their own:
- WorkflowTransition: every phase change of every run, with its actor (engine, `admin:<user>`,
  `cli`) and correlation id; replays and discards are transitions too;
- Approval: each approver's decision on a proposal (one row per approver, a DB constraint);
- Django admin's LogEntry: every change made through the admin, and each replay or discard made
  from the operations dashboard.
None of them can be changed or deleted in the admin (ReadOnlyAdmin), nor in the database:
triggers refuse UPDATE, DELETE and TRUNCATE of their rows (the migration
operations/0001_audit_append_only; orchestrator/infra/audit_guard.py for the prune setting)."""

from __future__ import annotations

import csv
import heapq
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, time, timedelta

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.db.models import QuerySet
from django.utils.dateparse import parse_date, parse_datetime

from approvals.models import Approval
from orchestrator.engine.models import WorkflowTransition
from orchestrator.infra.errors import DomainError

FORMATS = ("csv", "json", "jsonl")
ADMIN_ACTIONS = {ADDITION: "added", CHANGE: "changed", DELETION: "deleted"}


class BadAuditRange(DomainError, ValueError):
    """A date that does not parse, or a range that ends before it starts."""

    code = "bad_audit_range"


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    source: str  # transition | approval | admin
    actor: str
    action: str
    object: str
    detail: str
    correlation_id: str


def audit_range(since: str, until: str | None = None) -> tuple[datetime, datetime]:
    """Parses a range from ISO 8601 strings: a date means that whole day (UTC), a datetime that
    instant; naive datetimes are UTC. `until` defaults to now. Returns [since, until)."""
    start = _parse(since, end=False)
    stop = _parse(until, end=True) if until else datetime.now(UTC)
    if stop <= start:
        raise BadAuditRange(f"the range ends ({stop.isoformat()}) before it starts ({start.isoformat()})")
    return start, stop


def _parse(raw: str, *, end: bool) -> datetime:
    raw = raw.strip()
    try:
        # The date first: parse_datetime would also read "2026-01-31" (as its midnight).
        day = parse_date(raw)
        moment = None if day is not None else parse_datetime(raw)
    except ValueError:
        day = moment = None
    if day is not None:
        return _start_of(day + timedelta(days=1) if end else day)
    if moment is not None:
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    raise BadAuditRange(f"{raw!r} is not a date (2026-01-31) or a date and time (2026-01-31T12:00:00Z)")


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def audit_entries(*, since: datetime, until: datetime) -> Iterator[AuditEntry]:
    """Every audit entry with since <= at < until, oldest first, streamed from the database."""
    return audit_entries_of(
        transitions=WorkflowTransition.objects.filter(created_at__gte=since, created_at__lt=until),
        approvals=Approval.objects.filter(decided_at__gte=since, decided_at__lt=until),
        admin=LogEntry.objects.filter(action_time__gte=since, action_time__lt=until),
    )


def audit_entries_of(
    *,
    transitions: QuerySet[WorkflowTransition] | None = None,
    approvals: QuerySet[Approval] | None = None,
    admin: QuerySet[LogEntry] | None = None,
) -> Iterator[AuditEntry]:
    """The entries of the given rows (none of a source left out), oldest first: what retention
    exports, exactly the rows it then deletes."""
    return heapq.merge(
        _transitions(transitions if transitions is not None else WorkflowTransition.objects.none()),
        _approvals(approvals if approvals is not None else Approval.objects.none()),
        _admin(admin if admin is not None else LogEntry.objects.none()),
        key=lambda e: e.at,
    )


def _transitions(selected: QuerySet[WorkflowTransition]) -> Iterator[AuditEntry]:
    rows = selected.select_related("run").order_by("created_at", "id")
    for t in rows.iterator(chunk_size=2000):
        yield AuditEntry(
            at=t.created_at,
            source="transition",
            actor=t.actor,
            action=f"{t.from_phase or '-'} -> {t.to_phase}",
            object=f"workflow run {t.run_id} ({t.run.kind}, step {t.step_name or '-'})",
            detail=t.reason,
            correlation_id=t.correlation_id,
        )


def _approvals(selected: QuerySet[Approval]) -> Iterator[AuditEntry]:
    rows = selected.select_related("proposal", "approver").order_by("decided_at", "id")
    for a in rows.iterator(chunk_size=2000):
        yield AuditEntry(
            at=a.decided_at,
            source="approval",
            actor=a.approver.get_username(),
            action=a.decision,
            object=f"proposal {a.proposal.proposal_id}",
            detail=a.comment,
            correlation_id="",
        )


def _admin(selected: QuerySet[LogEntry]) -> Iterator[AuditEntry]:
    rows = selected.select_related("user", "content_type").order_by("action_time", "id")
    for e in rows.iterator(chunk_size=2000):
        kind = e.content_type.name if e.content_type else "object"
        yield AuditEntry(
            at=e.action_time,
            source="admin",
            actor=e.user.get_username(),
            action=ADMIN_ACTIONS.get(e.action_flag, str(e.action_flag)),
            object=f"{kind} {e.object_repr} ({e.object_id})",
            detail=e.get_change_message(),
            correlation_id="",
        )


COLUMNS = [f.name for f in fields(AuditEntry)]


def _row(entry: AuditEntry) -> dict[str, str]:
    row = asdict(entry)
    row["at"] = entry.at.isoformat()
    return row


def audit_csv(entries: Iterator[AuditEntry]) -> Iterator[str]:
    """CSV text in chunks (a header, then one line per entry), for streaming."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for entry in entries:
        writer.writerow(_row(entry))
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def audit_json(entries: Iterator[AuditEntry]) -> Iterator[str]:
    """A JSON array of entry objects in chunks, for streaming."""
    yield "["
    for n, entry in enumerate(entries):
        yield ("," if n else "") + "\n" + json.dumps(_row(entry))
    yield "\n]\n"


def audit_jsonl(entries: Iterator[AuditEntry]) -> Iterator[str]:
    """JSON lines: one entry object per line, the same fields as the other formats (what
    retention writes before it deletes, docs/operations.md, "Retention")."""
    for entry in entries:
        yield json.dumps(_row(entry)) + "\n"


def audit_export(*, since: datetime, until: datetime, format: str) -> Iterator[str]:
    if format not in FORMATS:
        raise BadAuditRange(f"format must be one of {', '.join(FORMATS)}")
    entries = audit_entries(since=since, until=until)
    return {"csv": audit_csv, "json": audit_json, "jsonl": audit_jsonl}[format](entries)
