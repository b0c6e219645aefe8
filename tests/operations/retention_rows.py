"""Rows for the retention tests: firings, journals, idempotency answers and audit entries of a
given age, each written as the code leaves it and then backdated."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from approvals.models import Approval, ProposalStatus, RebalanceProposal
from approvals.services import proposal_approve, proposal_create
from orchestrator.automations.models import Firing, Subscription
from orchestrator.engine.models import Phase, WorkflowRun, WorkflowTransition
from orchestrator.infra.models import IdempotencyRecord
from tests.factories import (
    ProtocolFactory,
    StepRunFactory,
    UserFactory,
    VaultFactory,
    VaultPolicyFactory,
    WorkflowRunFactory,
    WorkflowTransitionFactory,
)
from tests.support.audit import audit_rewritable
from tests.support.automations import bare_subscription


def days_ago(days: float) -> datetime:
    return timezone.now() - timedelta(days=days)


def subscription() -> Subscription:
    return bare_subscription("retention")


def firing(sub: Subscription, *, age_days: float, status: str = "skipped", **fields: Any) -> Firing:
    created = days_ago(age_days)
    rid = uuid.uuid4().hex
    return Firing.objects.create(
        subscription=sub,
        key=f"{sub.pk}:{rid}",
        request_id=rid,
        trigger_type="INTERVAL",
        due_at=created,
        request={},
        status=status,
        created_at=created,
        **fields,
    )


def firings_bulk(sub: Subscription, n: int, *, age_days: float) -> None:
    base = days_ago(age_days)
    rows = []
    for i in range(n):
        rid = uuid.uuid4().hex
        at = base - timedelta(seconds=i)
        rows.append(
            Firing(
                subscription=sub,
                key=f"{sub.pk}:{rid}",
                request_id=rid,
                trigger_type="INTERVAL",
                due_at=at,
                request={},
                status="skipped",
                created_at=at,
            )
        )
    Firing.objects.bulk_create(rows, batch_size=1000)


def run(phase: str, *, finished_days: float | None) -> WorkflowRun:
    finished = days_ago(finished_days) if finished_days is not None else None
    return WorkflowRunFactory.create(phase=phase, finished_at=finished)


def steps(r: WorkflowRun, *, age_days: float, n: int = 2) -> list[int]:
    started = days_ago(age_days)
    return [StepRunFactory.create(run=r, index=i, started_at=started).pk for i in range(n)]


def idempotency(*, age_days: float) -> int:
    record = IdempotencyRecord.objects.create(owner=UserFactory.create(), key=uuid.uuid4().hex, fingerprint="f")
    IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=days_ago(age_days))
    return record.pk


def transition(r: WorkflowRun, *, age_days: float) -> int:
    t = WorkflowTransitionFactory.create(run=r, from_phase=Phase.SUBMITTING, to_phase=r.phase, reason="by the test")
    with audit_rewritable():
        WorkflowTransition.objects.filter(pk=t.pk).update(created_at=days_ago(age_days))
    return t.pk


def admin_entry(*, age_days: float, note: str) -> int:
    user = get_user_model().objects.filter(username="retention-operator").first() or UserFactory.create(
        username="retention-operator", superuser=True
    )
    r = WorkflowRunFactory.create()
    entry = LogEntry.objects.create(
        user=user,
        content_type=ContentType.objects.get_for_model(WorkflowRun),
        object_id=str(r.pk),
        object_repr=str(r)[:200],
        action_flag=CHANGE,
        change_message=note,
    )
    with audit_rewritable():
        LogEntry.objects.filter(pk=entry.pk).update(action_time=days_ago(age_days))
    return entry.pk


class Proposals:
    """Proposals on one vault, each decided by one of two approvers (so it stays pending until
    the test closes it)."""

    def __init__(self) -> None:
        self.operator = UserFactory.create(superuser=True)
        self.approvers = [UserFactory.create(), UserFactory.create()]
        self.vault = VaultFactory.create(approval_quorum=2)
        for name in ("Aave USDC", "Morpho USDC"):
            ProtocolFactory.create(name=name)
        VaultPolicyFactory.create(vault=self.vault)

    def approval(self, *, age_days: float, closed: bool) -> int:
        proposal = proposal_create(
            vault=self.vault,
            allocation={"Aave USDC": "50", "Morpho USDC": "50"},
            proposer=self.operator,
            approvers=self.approvers,
        )
        proposal_approve(proposal=proposal, approver=self.approvers[0], comment=f"{age_days} days")
        if closed:
            RebalanceProposal.objects.filter(pk=proposal.pk).update(status=ProposalStatus.EXPIRED)
        approval = Approval.objects.get(proposal=proposal)
        with audit_rewritable():
            Approval.objects.filter(pk=approval.pk).update(decided_at=days_ago(age_days))
        return approval.pk


def ids(model: Any) -> set[Any]:
    return set(model.objects.values_list("pk", flat=True))
