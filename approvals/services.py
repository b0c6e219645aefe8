"""Rebalance proposals (Flow B, docs/flow-b.md): creation, decisions under a row lock, quorum,
expiry, execution and notifications.

Every refusal is a DomainError: its code and HTTP status are what the API answers, and the
admin shows its message."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.errors import (
    AlreadyDecided,
    NotAnApprover,
    OwnProposal,
    ProposalClosed,
    ProposalInvalid,
    ProposalNotApproved,
)
from approvals.lifecycle import notify, proposal_close, proposal_expire_if_due, proposal_link
from approvals.models import Approval, Decision, ProposalSource, ProposalStatus, RebalanceProposal
from approvals.safe_proposals import (
    SignatureRequired,
    proposal_safe_attach,
    proposal_safe_plan,
    proposal_safe_txs,
    safe_execution_start,
    safe_owner_users,
)
from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.services import workflow_start
from orchestrator.infra.validation import decimal_text
from vaults.models import PolicyStatus, Protocol, SignedFeed, Vault, VaultPolicy
from vaults.services.compliance import ComplianceResult, PolicyRules, compliance_check
from vaults.services.feeds import feed_entries
from vaults.services.strategy import HUNDRED

logger = logging.getLogger("approvals")

EXECUTE_WORKFLOW = "proposal.execute"


# --- creation --------------------------------------------------------------------------------


def _next_proposal_id() -> str:
    prefix = f"PROP-{timezone.now().year}-"
    numbers = [
        int(pid.removeprefix(prefix))
        for pid in RebalanceProposal.objects.filter(proposal_id__startswith=prefix).values_list(
            "proposal_id", flat=True
        )
        if pid.removeprefix(prefix).isdigit()
    ]
    return f"{prefix}{max(numbers, default=0) + 1:03d}"


def allocation_validate(*, vault: Vault, allocation: dict[str, Any]) -> dict[str, Decimal]:
    """Percentages by protocol of the vault's chain, summing to exactly 100. Raises
    ProposalInvalid."""
    known = set(Protocol.objects.filter(chain=vault.chain).values_list("name", flat=True))
    clean: dict[str, Decimal] = {}
    for name, pct in allocation.items():
        if name not in known:
            raise ProposalInvalid(f"unknown protocol {name!r}")
        # A string (the API's) in plain ASCII digits: Decimal() alone would take "1_0" and "١٢".
        if isinstance(pct, bool) or (isinstance(pct, str) and not decimal_text(pct)):
            raise ProposalInvalid(f"{name}: {str(pct)[:40]!r} is not a percentage in ASCII digits, like 60 or 33.5")
        try:
            value = Decimal(str(pct))
        except InvalidOperation:
            raise ProposalInvalid(f"{name}: {pct!r} is not a percentage") from None
        if not value.is_finite() or value < 0 or value > HUNDRED:
            raise ProposalInvalid(f"{name}: {pct} is not between 0 and 100")
        clean[name] = value
    if sum(clean.values(), Decimal(0)) != HUNDRED:
        raise ProposalInvalid(f"allocations sum to {sum(clean.values(), Decimal(0))}%, not 100%")
    return clean


def proposal_create(
    *,
    vault: Vault,
    policy: VaultPolicy | None = None,
    allocation: dict[str, Any],
    proposer: Any = None,
    approvers: list[Any] | None = None,
    quorum: int | None = None,
    feed: SignedFeed | None = None,
    expires_at: datetime | None = None,
) -> RebalanceProposal:
    """Creates a pending proposal and tells its approvers. Without approvers/quorum it takes
    the vault's; without a policy, the vault's active one. Raises ProposalInvalid.

    On a Safe vault the approvers are the users whose wallets own the Safe and the quorum is
    its threshold (given ones must match), and the proposal gets its Safe transaction, planned
    from the Safe's positions now (approvals/safe_proposals.py)."""
    if vault.safe_address:
        approvers, quorum = _safe_approvers(vault, approvers, quorum)
    approvers = list(approvers if approvers is not None else vault.approvers.all())
    quorum = quorum if quorum is not None else vault.approval_quorum
    policy = policy or vault.policies.filter(status=PolicyStatus.ACTIVE).first()
    if policy is None:
        raise ProposalInvalid(f"{vault.vault_id} has no active policy")
    if not approvers:
        raise ProposalInvalid(f"{vault.vault_id} has no designated approvers")
    if not 1 <= quorum <= len(approvers):
        raise ProposalInvalid(f"quorum {quorum} must be between 1 and {len(approvers)} (the approvers)")
    if proposer is not None and proposer in approvers:
        raise ProposalInvalid("a proposer cannot approve their own proposal")
    clean = allocation_validate(vault=vault, allocation=allocation)
    expires = expires_at or timezone.now() + timedelta(seconds=settings.PROPOSAL_TTL_SECONDS)
    if expires <= timezone.now():
        raise ProposalInvalid("the expiry is in the past")
    # A Safe vault's transaction is planned from the chain before the transaction that records it.
    planned = proposal_safe_plan(vault=vault, allocation=clean) if vault.safe_address else None
    for _ in range(5):
        try:
            with transaction.atomic():
                proposal = RebalanceProposal.objects.create(
                    proposal_id=_next_proposal_id(),
                    vault=vault,
                    proposer=proposer,
                    source=ProposalSource.OPERATOR if proposer else ProposalSource.FLOW_A,
                    quorum_required=quorum,
                    proposed_allocations={k: str(v) for k, v in clean.items()},
                    policy=policy,
                    feed=feed,
                    expires_at=expires,
                )
                proposal.approvers.set(approvers)
                if planned is not None:
                    proposal_safe_attach(proposal, planned)
                notify(
                    approvers,
                    f"{proposal.proposal_id} needs your decision",
                    f"A rebalance of {vault.vault_id} waits for {quorum} of {len(approvers)} approvers: "
                    f"{proposal_link(proposal)}",
                )
        except IntegrityError:
            continue  # another proposal took that number first
        logger.info(
            "proposal %s for %s waits for %s of %s approvers",
            proposal.proposal_id,
            vault.vault_id,
            quorum,
            len(approvers),
        )
        return proposal
    raise ProposalInvalid("could not allocate a proposal id")


def _safe_approvers(vault: Vault, approvers: list[Any] | None, quorum: int | None) -> tuple[list[Any], int]:
    owners, threshold, unregistered = safe_owner_users(vault)
    if unregistered:
        raise ProposalInvalid(
            f"owners {', '.join(unregistered)} of the Safe of {vault.vault_id} have no registered wallet: "
            "each owner registers theirs (Your approver wallet, in the admin) before proposals"
        )
    named = sorted(u.get_username() for u in owners)
    if approvers is not None and sorted(u.get_username() for u in approvers) != named:
        raise ProposalInvalid(f"the approvers of {vault.vault_id} are its Safe's owners: {', '.join(named)}")
    if quorum is not None and quorum != threshold:
        raise ProposalInvalid(f"the quorum of {vault.vault_id} is its Safe's threshold, {threshold}")
    # What the admin shows as the vault's approvers follows the Safe (owners change on chain).
    vault.approvers.set(owners)
    if vault.approval_quorum != threshold:
        Vault.objects.filter(pk=vault.pk).update(approval_quorum=threshold)
    return owners, threshold


# --- decisions -------------------------------------------------------------------------------


def proposal_approve(*, proposal: RebalanceProposal, approver: Any, comment: str = "") -> RebalanceProposal:
    return _decide(proposal=proposal, approver=approver, decision=Decision.APPROVE, comment=comment)


def proposal_reject(*, proposal: RebalanceProposal, approver: Any, comment: str = "") -> RebalanceProposal:
    return _decide(proposal=proposal, approver=approver, decision=Decision.REJECT, comment=comment)


def _decide(*, proposal: RebalanceProposal, approver: Any, decision: str, comment: str) -> RebalanceProposal:
    """Records one decision under the proposal's row lock, so two approvers deciding at the same
    moment are counted one after the other and quorum is reached exactly once. Raises
    NotAnApprover, OwnProposal, ProposalClosed, AlreadyDecided."""
    with transaction.atomic():
        locked = (
            RebalanceProposal.objects.select_for_update(of=("self",))
            .select_related("vault", "proposer")
            .get(pk=proposal.pk)
        )
        if not locked.approvers.filter(pk=approver.pk).exists():
            raise NotAnApprover(f"{approver.get_username()} is not an approver of {locked.proposal_id}")
        if locked.proposer_id is not None and locked.proposer_id == approver.pk:
            raise OwnProposal("a proposer cannot decide on their own proposal")
        if proposal_safe_txs(locked)[0] is not None:
            raise SignatureRequired(
                f"{locked.proposal_id} is a Safe transaction: sign it with your wallet "
                f"(POST /v1/proposals/{locked.proposal_id}/signatures, or Approve in the admin)"
            )
        proposal_expire_if_due(locked)
        if locked.status != ProposalStatus.PENDING:
            raise ProposalClosed(f"{locked.proposal_id} is {locked.status}")
        if Approval.objects.filter(proposal=locked, approver=approver).exists():
            raise AlreadyDecided(f"{approver.get_username()} already decided on {locked.proposal_id}")
        Approval.objects.create(proposal=locked, approver=approver, decision=decision, comment=comment[:2000])
        approvals = locked.approvals.filter(decision=Decision.APPROVE).count()
        rejections = locked.approvals.filter(decision=Decision.REJECT).count()
        designated = locked.approvers.count()
        if approvals >= locked.quorum_required:
            proposal_close(locked, ProposalStatus.APPROVED, f"approved by {approvals} of {designated}")
            proposal_execution_start(proposal=locked, started_by=approver)
        elif designated - rejections < locked.quorum_required:
            proposal_close(
                locked,
                ProposalStatus.REJECTED,
                f"{rejections} rejection(s) make a quorum of {locked.quorum_required} unreachable",
            )
    logger.info("%s %ss %s (%s)", approver.get_username(), decision, locked.proposal_id, locked.status)
    return locked


def proposals_expire(*, now: datetime | None = None) -> int:
    """Beat's pass: pending proposals past their expiry become expired (and their proposers are
    told). Returns how many."""
    now = now or timezone.now()
    expired = 0
    with transaction.atomic():
        for proposal in (
            RebalanceProposal.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("proposer")
            .filter(status=ProposalStatus.PENDING, expires_at__lte=now)[:500]
        ):
            proposal_close(proposal, ProposalStatus.EXPIRED, f"expired at {proposal.expires_at.isoformat()}")
            expired += 1
    return expired


# --- execution -------------------------------------------------------------------------------


def proposal_execution_start(*, proposal: RebalanceProposal, started_by: Any = None) -> WorkflowRun:
    """Starts (once: the idempotency key is the proposal) the workflow that re-checks compliance
    against the policy active now, emits the intent and relays it. `started_by` owns the run if
    this call starts it (the approver whose decision made quorum, or whoever asked to execute);
    a repeat returns the run with its first owner. Whoever may read the proposal may read the
    run (approvals/workflows.py)."""
    if proposal.status not in (ProposalStatus.APPROVED, ProposalStatus.EXECUTED):
        raise ProposalNotApproved(f"{proposal.proposal_id} is {proposal.status}; only approved proposals execute")
    main, _ = proposal_safe_txs(proposal)
    if main is not None:
        return safe_execution_start(row=main, started_by=started_by)
    run, _ = workflow_start(
        kind=EXECUTE_WORKFLOW,
        input={"proposal": proposal.pk},
        idempotency_key=f"flow-b:{proposal.pk}",
        owner=started_by,
    )
    return run


def proposal_feed(proposal: RebalanceProposal) -> SignedFeed | None:
    """The feed whose risk scores and age the check uses: the proposal's own, else the newest
    from an oracle the vault's active policy trusts."""
    if proposal.feed_id:
        return proposal.feed
    policy = proposal.vault.policies.filter(status=PolicyStatus.ACTIVE).first()
    if policy is None:
        return None
    return SignedFeed.objects.filter(oracle__in=policy.oracles.all()).order_by("-timestamp").first()


def proposal_compliance(
    *, proposal: RebalanceProposal, current: dict[str, Decimal], now: datetime | None = None
) -> ComplianceResult:
    """The proposed allocation against the vault's policy active *now* (it may have changed
    since the proposal was made). Turnover counts from `current` (% by protocol, with idle)."""
    policy = proposal.vault.policies.filter(status=PolicyStatus.ACTIVE).first()
    if policy is None:
        from vaults.services.compliance import Violation

        return ComplianceResult([Violation("policy", f"{proposal.vault.vault_id} has no active policy")])
    feed = proposal_feed(proposal)
    return compliance_check(
        rules=PolicyRules.of(policy),
        allocation={k: Decimal(v) for k, v in proposal.proposed_allocations.items()},
        risks={e.protocol: e.risk for e in feed_entries(feed.entries)} if feed else {},
        current=current,
        feed_time=feed.timestamp if feed else None,
        last_rebalance_at=proposal.vault.last_rebalance_at,
        now=now or timezone.now(),
    )


def proposal_current_allocation(*, proposal: RebalanceProposal) -> dict[str, str]:
    """The vault's allocation on chain now, % by protocol and idle (an RPC read)."""
    from relayer.rpc import web3_for
    from vaults.onchain import positions

    vault = proposal.vault
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    held = positions(
        w3=web3_for(vault.chain.rpc_url), account=vault.holder, asset=vault.asset_address, protocols=protocols
    )
    if not held.total:
        return {"idle": "0.00"}
    shares = {name: amount * 100 / held.total for name, amount in held.by_protocol.items()}
    shares["idle"] = held.idle * 100 / held.total
    return {name: f"{pct:.2f}" for name, pct in shares.items()}


def proposal_compliance_preview(
    *, proposal: RebalanceProposal, current: dict[str, str] | None = None
) -> ComplianceResult:
    """For display: the check as execution would run it now. `current` is the on-chain
    allocation when the caller has read it already (else it is read here)."""
    if current is None:
        try:
            current = proposal_current_allocation(proposal=proposal)
        except Exception:  # chain unreachable: judge turnover from an empty book
            current = {}
    return proposal_compliance(proposal=proposal, current={k: Decimal(v) for k, v in current.items()})
