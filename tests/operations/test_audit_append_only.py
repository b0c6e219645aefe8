"""The audit trail is append-only in PostgreSQL, not only through the ORM (issue 14): every way
round the models' own refusals (QuerySet.update and .delete, raw SQL, TRUNCATE, a cascade from a
deleted run, proposal or user) is refused by the trigger and leaves the rows as they were; the
one deliberate way to delete (retention's prune setting) never allows a change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.db.models import Model, ProtectedError, QuerySet

from approvals.models import Approval
from approvals.services import proposal_approve, proposal_create
from orchestrator.engine.models import Phase, WorkflowRun, WorkflowTransition
from orchestrator.infra.audit_guard import audit_prune
from tests.factories import ProtocolFactory, UserFactory, VaultFactory, VaultPolicyFactory
from tests.support.runs import make_run
from vaults.models import SafeSignature, SafeTransaction, SafeTxPurpose

REFUSED = "the audit trail is append-only"


@pytest.fixture
def trail() -> dict[str, Any]:
    """One row of each audit source: a run's transitions, an approval, an admin log entry."""
    operator = UserFactory.create(superuser=True, username="operator")
    approvers = [UserFactory.create(username=f"approver{i}") for i in (1, 2)]
    vault = VaultFactory.create(approval_quorum=2)
    for name in ("Aave USDC", "Morpho USDC"):
        ProtocolFactory.create(name=name)
    VaultPolicyFactory.create(vault=vault)
    run = make_run(Phase.DEAD_LETTER)
    proposal = proposal_create(
        vault=vault, allocation={"Aave USDC": "50", "Morpho USDC": "50"}, proposer=operator, approvers=approvers
    )
    proposal_approve(proposal=proposal, approver=approvers[0], comment="looks right")
    # An owner's signature of a Safe transaction (made here without a chain: only the row matters).
    safe_tx = SafeTransaction.objects.create(
        vault=vault, purpose=SafeTxPurpose.REBALANCE, nonce=0, tx={}, safe_tx_hash="0x" + "ab" * 32, summary="-"
    )
    SafeSignature.objects.create(safe_tx=safe_tx, owner="0x" + "11" * 20, signature="0x" + "22" * 65)
    clerk = UserFactory.create(username="clerk", staff=True)  # proposes nothing: only the log holds on
    LogEntry.objects.log_actions(
        user_id=clerk.pk, queryset=[run], action_flag=CHANGE, change_message="noted", single_object=True
    )
    return {"run": run, "proposal": proposal, "clerk": clerk}


def _snapshot() -> dict[str, list[tuple[Any, ...]]]:
    return {
        "transitions": list(WorkflowTransition.objects.order_by("id").values_list("id", "reason", "created_at")),
        "approvals": list(Approval.objects.order_by("id").values_list("id", "comment", "decided_at")),
        "admin": list(LogEntry.objects.order_by("id").values_list("id", "change_message", "action_time")),
        "safe signatures": list(SafeSignature.objects.order_by("id").values_list("id", "signature", "created_at")),
    }


def _refused(attempt: Callable[[], object], error: type[Exception] = ProgrammingError, match: str = REFUSED) -> None:
    """The attempt fails, in a savepoint of its own so that the test's transaction goes on."""
    with pytest.raises(error, match=match), transaction.atomic():
        attempt()


def _raw(sql: str) -> Callable[[], None]:
    def run() -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql)

    return run


SOURCES: list[tuple[type[Model], str, str]] = [
    (WorkflowTransition, "orchestrator_workflowtransition", "reason"),
    (Approval, "approvals_approval", "comment"),
    (LogEntry, "django_admin_log", "change_message"),
    (SafeSignature, "vaults_safesignature", "signature"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "table", "text_field"), SOURCES, ids=[s[1] for s in SOURCES])
def test_no_way_round_the_orm_changes_or_deletes_an_audit_row(
    trail: dict[str, Any], model: type[Model], table: str, text_field: str
) -> None:
    before = _snapshot()
    rows: QuerySet[Any] = model._default_manager.all()
    assert rows.exists()
    _refused(lambda: rows.update(**{text_field: "rewritten history"}), match=f"{REFUSED}: UPDATE on {table}")
    _refused(lambda: rows.delete(), match=f"{REFUSED}: DELETE on {table}")
    _refused(_raw(f"UPDATE {table} SET {text_field} = 'rewritten history'"), match=f"UPDATE on {table}")
    _refused(_raw(f"DELETE FROM {table}"), match=f"DELETE on {table}")
    # (Rows this transaction wrote have foreign-key checks pending, which TRUNCATE would refuse first.)
    _refused(_raw(f"SET CONSTRAINTS ALL IMMEDIATE; TRUNCATE {table} CASCADE"), match=f"TRUNCATE on {table}")
    assert _snapshot() == before


@pytest.mark.django_db
def test_deleting_a_run_keeps_its_transitions(trail: dict[str, Any]) -> None:
    run: WorkflowRun = trail["run"]
    before = _snapshot()
    # The ORM no longer cascades: PROTECT refuses before any SQL is sent.
    _refused(run.delete, ProtectedError, match="protected foreign keys")
    _refused(lambda: WorkflowRun.objects.filter(pk=run.pk).delete(), ProtectedError, match="protected foreign keys")

    # Nor does the database: the foreign key has no ON DELETE CASCADE, so the run stays.
    def raw_delete() -> None:
        _raw(f"DELETE FROM orchestrator_workflowrun WHERE id = '{run.pk}'")()
        _raw("SET CONSTRAINTS ALL IMMEDIATE")()

    _refused(raw_delete, IntegrityError, match="orchestrator_workflowtransition")
    assert WorkflowRun.objects.filter(pk=run.pk).exists()
    assert _snapshot() == before


@pytest.mark.django_db
def test_cascades_from_a_proposal_or_a_user_are_refused(trail: dict[str, Any]) -> None:
    before = _snapshot()
    _refused(trail["proposal"].delete, error=ProtectedError, match="protected foreign keys")
    _refused(trail["clerk"].delete, match=f"{REFUSED}: DELETE on django_admin_log")
    assert _snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_the_prune_setting_allows_deleting_but_never_changing(trail: dict[str, Any]) -> None:
    """The deliberate way retention (after export) deletes audit rows; outside it, and after it
    inside the same transaction, the triggers refuse as before. The flush after this
    transactional test deletes the rest through the same setting (tests/conftest.py)."""
    run: WorkflowRun = trail["run"]
    with audit_prune():
        _refused(lambda: LogEntry.objects.update(change_message="x"), match="UPDATE on django_admin_log")
        assert WorkflowTransition.objects.filter(run=run).delete()[0] == 2
        run.delete()  # nothing protects it any more
    assert not WorkflowRun.objects.filter(pk=run.pk).exists()
    _refused(lambda: LogEntry.objects.all().delete(), match="DELETE on django_admin_log")
    with transaction.atomic():
        with audit_prune():
            pass
        _refused(lambda: Approval.objects.all().delete(), match="DELETE on approvals_approval")
    assert LogEntry.objects.count() == 1 and Approval.objects.count() == 1
