"""Retention on the real database: what is old and finished goes, everything else stays, and
audit entries are in an fsynced JSON-lines file before their rows are deleted."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from approvals.models import Approval
from orchestrator.automations.models import Firing
from orchestrator.engine.models import Phase, StepRun, WorkflowTransition
from orchestrator.infra.models import IdempotencyRecord
from orchestrator.operations.audit import audit_entries_of
from orchestrator.operations.retention import retention_prune
from orchestrator.operations.schedules import fixed_schedule
from tests.factories import UserFactory
from tests.operations import retention_rows as rows
from tests.operations.retention_rows import days_ago, ids

pytestmark = pytest.mark.django_db


@pytest.fixture
def periods(settings: Any, tmp_path: Path) -> Path:
    settings.RETENTION_FIRINGS_DAYS = 90
    settings.RETENTION_STEP_JOURNAL_DAYS = 30
    settings.RETENTION_IDEMPOTENCY_DAYS = 7
    settings.RETENTION_AUDIT_DAYS = 400
    settings.RETENTION_EXPORT_DIR = tmp_path / "audit-export"
    return settings.RETENTION_EXPORT_DIR


@pytest.fixture
def world(periods: Path) -> dict[str, Any]:
    """Old, young and live rows of every kind; `gone` names what retention must delete."""
    gone: dict[str, set[Any]] = {k: set() for k in ("firing", "step", "idem", "transition", "approval", "admin")}
    sub = rows.subscription()
    completed_long_ago = rows.run(Phase.COMPLETED, finished_days=500)
    dead = rows.run(Phase.DEAD_LETTER, finished_days=None)
    # Firings (90 days): old and final go; pending, reporting, due, leased, of a live run, young stay.
    gone["firing"] |= {
        rows.firing(sub, age_days=100, status="skipped").pk,
        rows.firing(sub, age_days=100, status="relayed", report_status="delivered").pk,
        rows.firing(sub, age_days=100, status="refused", report_status="failed").pk,
        rows.firing(sub, age_days=100, status="failed", workflow_run=completed_long_ago).pk,
    }
    rows.firing(sub, age_days=100, status="pending")
    rows.firing(sub, age_days=100, status="relayed", report_status="pending")
    rows.firing(sub, age_days=100, status="skipped", next_attempt_at=timezone.now())
    rows.firing(sub, age_days=100, status="relayed", lease_until=timezone.now() + timedelta(minutes=1))
    rows.firing(sub, age_days=100, status="failed", workflow_run=dead)
    rows.firing(sub, age_days=10, status="skipped")
    # Step journal (30 days after the run finished): only final runs finished long enough ago.
    for phase in (Phase.COMPLETED, Phase.FAILED, Phase.BLOCKED):
        gone["step"] |= set(rows.steps(rows.run(phase, finished_days=40), age_days=41))
    rows.steps(dead, age_days=41)
    rows.steps(rows.run(Phase.CONFIRMING, finished_days=None), age_days=41)
    rows.steps(rows.run(Phase.SUBMITTING, finished_days=None), age_days=41)
    rows.steps(rows.run(Phase.COMPLETED, finished_days=10), age_days=41)  # finished too recently
    rows.steps(rows.run(Phase.COMPLETED, finished_days=1), age_days=1)
    # Idempotency answers (7 days).
    gone["idem"] |= {rows.idempotency(age_days=8), rows.idempotency(age_days=30)}
    rows.idempotency(age_days=6)
    # Audit (400 days): transitions of final runs, decisions on closed proposals, admin entries.
    gone["transition"] |= {rows.transition(completed_long_ago, age_days=500)}
    rows.transition(dead, age_days=500)  # replay reads a dead-lettered run's transitions
    rows.transition(rows.run(Phase.COMPLETED, finished_days=1), age_days=1)
    proposals = rows.Proposals()
    gone["approval"] |= {proposals.approval(age_days=500, closed=True)}
    proposals.approval(age_days=500, closed=False)
    proposals.approval(age_days=1, closed=True)
    gone["admin"] |= {rows.admin_entry(age_days=500, note="old"), rows.admin_entry(age_days=450, note="older")}
    rows.admin_entry(age_days=1, note="young")
    return {"gone": gone, "before": _all(), "sub": sub}


def _all() -> dict[str, set[Any]]:
    return {
        "firing": ids(Firing),
        "step": ids(StepRun),
        "idem": ids(IdempotencyRecord),
        "transition": ids(WorkflowTransition),
        "approval": ids(Approval),
        "admin": ids(LogEntry),
    }


def _exported(directory: Path) -> list[dict[str, str]]:
    return [json.loads(line) for path in sorted(directory.rglob("*.jsonl")) for line in path.read_text().splitlines()]


def _as_rows(entries: Any) -> list[dict[str, str]]:
    return [json.loads(json.dumps({**e.__dict__, "at": e.at.isoformat()})) for e in entries]


def test_it_deletes_what_is_old_and_finished_and_nothing_else(world: dict[str, Any], periods: Path) -> None:
    gone = world["gone"]
    audit_before = _as_rows(
        audit_entries_of(
            transitions=WorkflowTransition.objects.filter(pk__in=gone["transition"]),
            approvals=Approval.objects.filter(pk__in=gone["approval"]),
            admin=LogEntry.objects.filter(pk__in=gone["admin"]),
        )
    )

    # Batches of 2 make every kind take several batches (the keyset walk, not one big delete).
    result = retention_prune(batch=2, pause=0)

    after = _all()
    for kind, before in world["before"].items():
        assert after[kind] == before - gone[kind], kind
    assert result.deleted == {
        "firings": 4,
        "step_journal": 6,
        "idempotency": 2,
        "audit_transition": 1,
        "audit_approval": 1,
        "audit_admin": 2,
    }
    assert result.more_left == []
    # Every deleted audit row is in the export, with the audit export's fields, once.
    exported = _exported(periods)
    assert sorted(exported, key=lambda e: (e["source"], e["at"])) == sorted(
        audit_before, key=lambda e: (e["source"], e["at"])
    )
    assert all(set(e) == {"at", "source", "actor", "action", "object", "detail", "correlation_id"} for e in exported)
    assert not list(periods.rglob("*.partial"))
    # A second run finds nothing more and writes no file.
    again = retention_prune(batch=2, pause=0)
    assert sum(again.deleted.values()) == 0 and again.exported_files == 0
    assert _all() == after


def test_a_period_of_zero_keeps_the_kind_for_ever(world: dict[str, Any], settings: Any) -> None:
    settings.RETENTION_FIRINGS_DAYS = settings.RETENTION_AUDIT_DAYS = 0
    result = retention_prune(batch=100, pause=0)
    assert "firings" not in result.deleted and "audit_admin" not in result.deleted
    assert ids(Firing) == world["before"]["firing"]
    assert ids(LogEntry) == world["before"]["admin"]
    assert ids(StepRun) == world["before"]["step"] - world["gone"]["step"]


def test_an_audit_batch_whose_delete_fails_keeps_its_rows_and_is_exported_again(periods: Path) -> None:
    """The file is written and fsynced before the DELETE; if the DELETE (or the process) fails,
    the transaction takes nothing with it, and the next run writes the same file again, whole."""
    old = {rows.admin_entry(age_days=500, note=f"entry {i}") for i in range(3)}
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the disk under the database is gone'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_delete BEFORE DELETE ON django_admin_log "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_delete()"
        )
    with pytest.raises(Exception, match="the disk under the database is gone"):
        retention_prune(batch=10, pause=0)
    assert ids(LogEntry) >= old
    [file] = list(periods.rglob("*.jsonl"))
    assert sorted(e["detail"] for e in _exported(periods)) == ["entry 0", "entry 1", "entry 2"]
    written = file.read_text()

    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse_delete ON django_admin_log")
    result = retention_prune(batch=10, pause=0)

    assert result.deleted["audit_admin"] == 3 and not ids(LogEntry) & old
    assert list(periods.rglob("*.jsonl")) == [file]  # the same name, written again
    assert file.read_text() == written


def test_the_jsonl_export_has_one_entry_per_line(world: dict[str, Any]) -> None:
    out = io.StringIO()
    call_command("audit", "export", "--since", days_ago(600).date().isoformat(), "--format", "jsonl", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == WorkflowTransition.objects.count() + Approval.objects.count() + LogEntry.objects.count()
    assert all(
        set(json.loads(line)) == {"at", "source", "actor", "action", "object", "detail", "correlation_id"}
        for line in lines
    )


def test_beat_runs_the_pruner(settings: Any) -> None:
    task, every, queue = fixed_schedule()["retention prune"]
    assert (task, every, queue) == ("operations.retention_prune", settings.RETENTION_PRUNE_SECONDS, "workflows")


def test_the_admin_export_offers_json_lines(world: dict[str, Any], client: Any) -> None:
    client.force_login(UserFactory.create(superuser=True))
    response = client.get("/admin/operations/audit/", {"since": days_ago(600).date().isoformat(), "format": "jsonl"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"].endswith('.jsonl"')
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == WorkflowTransition.objects.count() + Approval.objects.count() + LogEntry.objects.count()


def test_the_command_runs_the_pruner_once(world: dict[str, Any], periods: Path) -> None:
    out = io.StringIO()
    call_command("retention", "prune", "--max-seconds", "60", stdout=out)
    assert "firings: 4 deleted" in out.getvalue() and "audit_admin: 2 deleted" in out.getvalue()
    assert "audit files written: 3" in out.getvalue() and "more left" not in out.getvalue()
    assert ids(Firing) == world["before"]["firing"] - world["gone"]["firing"]
