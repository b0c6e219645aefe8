"""What the soak reads back from the system's own records (through the database alias of the
stack, never the bench's own settings): firings, relay requests, proposal decisions and
workflow runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count

from approvals.models import Approval, ProposalStatus, RebalanceProposal
from orchestrator.automations.models import Firing, SourceType, Subscription
from orchestrator.devtools.benchmarks.soak_proposals import ProposalTrace
from orchestrator.devtools.benchmarks.soak_report import Cadence, FiringRow
from orchestrator.engine.models import WorkflowRun
from relayer.models import RelayTransaction, TxPhase


def cadences(alias: str, labels: dict[str, str]) -> list[Cadence]:
    """Every INTERVAL subscription; the first due time is its earliest firing's (they are all
    on one cadence), or one interval after it was created if none fired yet."""
    found = []
    subs = Subscription.objects.using(alias).filter(config__source_type=SourceType.INTERVAL).select_related("config")
    for sub in subs:
        interval = sub.config.interval_seconds or 1
        first = Firing.objects.using(alias).filter(subscription=sub).order_by("due_at").values_list("due_at", flat=True)
        first_due = first.first() or sub.created_at + timedelta(seconds=interval)
        label = labels.get(str(sub.id), f"subscription {str(sub.id)[:8]}")
        found.append(Cadence(str(sub.id), label, interval, first_due, sub.cancelled_at))
    return found


def firing_rows(alias: str) -> list[FiringRow]:
    rows = Firing.objects.using(alias).filter(trigger_type=SourceType.INTERVAL)
    return [
        FiringRow(str(sub), due, sent, answered, status, rid)
        for sub, due, sent, answered, status, rid in rows.values_list(
            "subscription_id", "due_at", "sent_at", "answered_at", "status", "request_id"
        )
    ]


def post_executions_missing(alias: str, *, until: datetime) -> list[str]:
    """Relayed tasks (due by `until`) whose /kernel/executed was not delivered."""
    rows = Firing.objects.using(alias).filter(relay_transaction__isnull=False, due_at__lte=until)
    return [
        f"{rid}: report {status or 'not due'}"
        for rid, status in rows.exclude(report_status__in=["delivered", "skipped"]).values_list(
            "request_id", "report_status"
        )
    ]


@dataclass
class RelayCheck:
    requested: int = 0
    confirmed: int = 0
    open: list[str] = field(default_factory=list)  # "<kind> <id>: <phase> <error>"

    @property
    def unconfirmed(self) -> int:
        return len(self.open)


def relays(alias: str, *, until: datetime) -> RelayCheck:
    """Relay requests made by `until`, and those not confirmed on chain."""
    check = RelayCheck()
    for rid, kind, phase, error in (
        RelayTransaction.objects.using(alias)
        .filter(created_at__lte=until)
        .values_list("id", "requested_by_kind", "phase", "error")
    ):
        check.requested += 1
        if phase == TxPhase.COMPLETED:
            check.confirmed += 1
        else:
            check.open.append(f"{kind or '-'} {str(rid)[:8]}: {phase} {error[:120]}".rstrip())
    return check


@dataclass
class DecisionCheck:
    posted: int = 0  # approvals the API accepted (200, or 409 already_decided on a retry)
    recorded: int = 0  # of those, found as Approval rows
    approved: int = 0  # proposals that reached their quorum
    executed: int = 0
    refused: list[str] = field(default_factory=list)  # approved, execution refused by the policy
    lost: list[str] = field(default_factory=list)  # a decision not recorded, or an approved proposal stuck


def decisions(alias: str, traces: list[ProposalTrace]) -> DecisionCheck:
    check = DecisionCheck()
    for trace in traces:
        if not trace.decisions:
            continue
        proposal = RebalanceProposal.objects.using(alias).get(proposal_id=trace.proposal_id)
        recorded = set(
            Approval.objects.using(alias)
            .filter(proposal=proposal, decision="approve")
            .values_list("approver__username", flat=True)
        )
        for name, outcome in trace.decisions.items():
            if outcome in ("recorded", "already"):
                check.posted += 1
                if name in recorded:
                    check.recorded += 1
                else:
                    check.lost.append(f"{trace.proposal_id}: {name}'s approval answered {outcome} but is not recorded")
            else:
                check.lost.append(f"{trace.proposal_id}: {name}'s approval got {outcome}")
        if proposal.status in (ProposalStatus.APPROVED, ProposalStatus.EXECUTED):
            check.approved += 1
        if proposal.status == ProposalStatus.EXECUTED:
            check.executed += 1
        elif proposal.status == ProposalStatus.APPROVED and proposal.execution_error:
            check.refused.append(f"{trace.proposal_id}: {proposal.execution_error[:160]}")
        elif proposal.status == ProposalStatus.APPROVED:
            check.lost.append(f"{trace.proposal_id}: approved, never executed")
    return check


def workflow_phases(alias: str) -> Counter[tuple[str, str]]:
    rows = (WorkflowRun.objects.using(alias).order_by().values("kind", "phase").annotate(n=Count("id"))).values_list(
        "kind", "phase", "n"
    )
    return Counter({(kind, phase): n for kind, phase, n in rows})
