"""The audit log: transitions, approvers' decisions and admin changes, exported for a date range."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from approvals.models import Approval
from approvals.services import proposal_approve, proposal_create
from orchestrator.engine.models import Phase, WorkflowTransition
from orchestrator.operations.audit import BadAuditRange, audit_range
from tests.factories import ProtocolFactory, UserFactory, VaultFactory, VaultPolicyFactory
from tests.support.audit import audit_rewritable
from tests.support.runs import make_run

pytestmark = pytest.mark.django_db
User = get_user_model()

JAN_10 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
JAN_20 = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)
FEB_01 = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def history() -> dict[str, Any]:
    """One of each kind of entry on 10 January, again on 20 January, and on 1 February."""
    operator = UserFactory.create(superuser=True, username="operator", password="x")
    approvers = [UserFactory.create(username=f"approver{i}", password="x") for i in (1, 2)]
    vault = VaultFactory.create(approval_quorum=2)
    for name in ("Aave USDC", "Morpho USDC"):
        ProtocolFactory.create(name=name)
    VaultPolicyFactory.create(vault=vault)
    made: dict[str, Any] = {}
    for label, when in (("early", JAN_10), ("middle", JAN_20), ("late", FEB_01)):
        run = make_run(Phase.DEAD_LETTER)
        proposal = proposal_create(
            vault=vault, allocation={"Aave USDC": "50", "Morpho USDC": "50"}, proposer=operator, approvers=approvers
        )
        proposal_approve(proposal=proposal, approver=approvers[0], comment=f"ok {label}")
        LogEntry.objects.log_actions(
            user_id=operator.pk, queryset=[run], action_flag=CHANGE, change_message=f"note {label}", single_object=True
        )
        # Rows are append-only in the database too; only a test, with the triggers off, backdates them.
        with audit_rewritable():
            WorkflowTransition.objects.filter(run=run).update(created_at=when)
            Approval.objects.filter(proposal=proposal).update(decided_at=when)
            LogEntry.objects.filter(object_id=str(run.id)).update(action_time=when)
        made[label] = {"run": run, "proposal": proposal}
    return made


def export(*args: str) -> str:
    out = io.StringIO()
    call_command("audit", "export", *args, stdout=out)
    return out.getvalue()


def test_the_command_exports_every_kind_of_entry_in_the_range_as_csv(history: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(export("--since", "2026-01-01", "--until", "2026-01-20"))))
    # 10 and 20 January (a date means the whole day): two transitions, an approval and an
    # admin entry each; nothing from February.
    assert len(rows) == 8
    assert [r["source"] for r in rows].count("transition") == 4
    assert {r["source"] for r in rows} == {"transition", "approval", "admin"}
    assert rows == sorted(rows, key=lambda r: r["at"])
    assert all(r["at"].startswith(("2026-01-10", "2026-01-20")) for r in rows)
    early = history["early"]
    approval = next(r for r in rows if r["source"] == "approval" and r["detail"] == "ok early")
    assert (approval["actor"], approval["action"]) == ("approver1", "approve")
    assert approval["object"] == f"proposal {early['proposal'].proposal_id}"
    dead = next(r for r in rows if r["action"] == "submitting -> dead-letter" and str(early["run"].id) in r["object"])
    assert dead["correlation_id"] == early["run"].correlation_id
    assert dead["actor"] == "engine"
    admin = next(r for r in rows if r["source"] == "admin" and r["detail"] == "note early")
    assert admin["actor"] == "operator" and admin["action"] == "changed"


def test_the_command_exports_json_with_exact_times(history: dict[str, Any]) -> None:
    entries = json.loads(
        export("--since", "2026-01-20T12:00:00Z", "--until", "2026-02-01T09:30:00Z", "--format", "json")
    )
    # The start is inclusive, the end exclusive: 20 January's entries, not February's.
    assert len(entries) == 4
    assert {e["at"] for e in entries} == {JAN_20.isoformat()}
    assert set(entries[0]) == {"at", "source", "actor", "action", "object", "detail", "correlation_id"}


def test_the_command_refuses_a_bad_range(tmp_path: Any) -> None:
    with pytest.raises(CommandError, match="not a date"):
        export("--since", "last tuesday")
    with pytest.raises(CommandError, match="before it starts"):
        export("--since", "2026-02-01", "--until", "2026-01-01")
    path = tmp_path / "empty.json"
    call_command(
        "audit",
        "export",
        "--since",
        "2020-01-01",
        "--until",
        "2020-01-02",
        "--format",
        "json",
        "--output",
        str(path),
        stderr=io.StringIO(),
    )
    assert json.loads(path.read_text()) == []


def test_a_date_covers_its_whole_day_and_naive_times_are_utc() -> None:
    since, until = audit_range("2026-01-10", "2026-01-10")
    assert (since, until) == (datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC))
    since, _ = audit_range("2026-01-10T08:00:00")
    assert since == datetime(2026, 1, 10, 8, tzinfo=UTC)
    with pytest.raises(BadAuditRange):
        audit_range("2026-13-01")


def test_the_admin_export_downloads_the_range_for_staff_with_the_permission(history: dict[str, Any]) -> None:
    client = Client()
    client.force_login(User.objects.get(username="operator"))
    form = client.get("/admin/operations/audit/")
    assert form.status_code == 200 and 'id="audit-form"' in form.content.decode()

    response = client.get("/admin/operations/audit/", {"since": "2026-02-01", "until": "2026-02-01", "format": "json"})
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-20260201')
    entries = json.loads(response.getvalue())
    assert len(entries) == 4 and {e["at"] for e in entries} == {FEB_01.isoformat()}

    csv_response = client.get("/admin/operations/audit/", {"since": "2026-01-01", "format": "csv"})
    assert csv_response["Content-Type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(csv_response.getvalue().decode())))) == 12

    bad = client.get("/admin/operations/audit/", {"since": "2026-02-01", "until": "2026-01-01", "format": "csv"})
    assert bad.status_code == 200 and "before it starts" in bad.content.decode()

    viewer = UserFactory.create(staff=True, username="viewer", password="x")
    client.force_login(viewer)
    assert client.get("/admin/operations/audit/", {"since": "2026-01-01"}).status_code == 403


def test_the_audit_sources_are_read_only_in_the_admin(history: dict[str, Any]) -> None:
    client = Client()
    client.force_login(User.objects.get(username="operator"))
    for url in ("/admin/orchestrator/workflowtransition/", "/admin/approvals/approval/", "/admin/admin/logentry/"):
        listing = client.get(url)
        assert listing.status_code == 200, url
        assert f'href="{url}add/"' not in listing.content.decode(), url
    entry = LogEntry.objects.get(change_message="note early")
    assert client.post(f"/admin/admin/logentry/{entry.pk}/change/", {"change_message": "x"}).status_code == 403
    assert client.post(f"/admin/admin/logentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert LogEntry.objects.filter(pk=entry.pk, change_message="note early").exists()
