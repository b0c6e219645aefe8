"""Executing a signed Safe transaction of a proposal: the rebalance at quorum, or its rejection.

check (owners, threshold, nonce and, for a rebalance, the policy active now) ─► send
(`execTransaction`, exactly once) ─► confirm (the Safe logged ExecutionSuccess)

The relayer's key only pays gas: the Safe checks the owners' signatures itself and reverts
anything else, so what `check` refuses here is refused early and in words, not instead."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.lifecycle import notify
from approvals.models import ProposalStatus, RebalanceProposal
from approvals.policy_commits import policy_commit_closed, policy_commit_settle
from approvals.safe_owners import vault_approvers_sync
from approvals.safe_proposals import SAFE_EXECUTE_WORKFLOW
from approvals.selectors import is_operator, proposals_visible_to
from approvals.services import proposal_compliance, proposal_current_allocation
from orchestrator.engine import (
    Blocked,
    RetryableError,
    RetryPolicy,
    Step,
    StepContext,
    TerminalError,
    Wait,
    Workflow,
    registry,
)
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_resume
from orchestrator.infra.failpoints import failpoint
from relayer.rpc import web3_for
from vaults import onchain
from vaults.models import Protocol, SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault
from vaults.services.safe_accounts import (
    SafeUnreachable,
    on_safe_tx_relayed,
    safe_exec_request,
    safe_tx_settle,
    safe_txs_void_below,
    signatures_counting,
    vault_safe_state,
)

# Waiting for an earlier nonce, or for the relay when a wake-up was lost.
POLL_SECONDS = settings.FLOW_SETTLE_POLL_SECONDS


@dataclass(frozen=True)
class Checked:
    """check: the signatures the transaction is sent with (owner -> signature), at its nonce."""

    nonce: int
    signatures: dict[str, str]
    compliance: str


@dataclass(frozen=True)
class Sent:
    relay: str


@dataclass(frozen=True)
class Settled:
    status: str
    transaction: str


def _row(ctx: StepContext) -> SafeTransaction:
    return SafeTransaction.objects.select_related("vault__chain", "vault__account", "relay").get(pk=ctx.input["safeTx"])


def _proposal(row: SafeTransaction) -> RebalanceProposal | None:
    return RebalanceProposal.objects.select_related("vault", "proposer").filter(proposal_id=row.proposal_id).first()


def _feasible(row: SafeTransaction, vault: Vault) -> str:
    """Why the signed calls would revert on the Safe's positions now, or "" if they would not:
    approvers signed amounts, and only an earlier transaction of this Safe moves them."""
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    held = onchain.positions(
        w3=web3_for(vault.chain.rpc_url), account=vault.safe_address, asset=vault.asset_address, protocols=protocols
    )
    idle = held.idle
    for action in row.plan.get("actions", []):
        amount = int(action["amount"])
        if action["kind"] == "withdraw":
            if held.by_protocol.get(action["protocol"], 0) < amount:
                return f"the Safe holds less than {amount} in {action['protocol']} now"
            idle += amount
        else:
            idle -= amount
            if idle < 0:
                return f"the Safe would lack the funds to deposit {amount} into {action['protocol']}"
    return ""


def check(ctx: StepContext) -> Checked | Wait:
    row = _row(ctx)
    vault = row.vault
    try:
        state = vault_safe_state(vault)
    except SafeUnreachable as exc:
        raise RetryableError(exc.message) from exc
    if row.status in (SafeTxStatus.SENDING, SafeTxStatus.EXECUTED):
        return Checked(nonce=row.nonce, signatures=signatures_counting(row, state), compliance="checked before")
    if state.nonce > row.nonce:
        safe_txs_void_below(vault=vault, nonce=state.nonce)
        policy_commit_closed(row)
        raise Blocked(f"the Safe is at nonce {state.nonce}: nonce {row.nonce} was used by another transaction")
    if state.nonce < row.nonce:
        return Wait(
            phase=Phase.CONFIRMING,
            resume_at=timezone.now() + timedelta(seconds=POLL_SECONDS),
            info={"waiting": f"Safe nonce {state.nonce} (an earlier proposal) to execute or be rejected"},
        )
    signatures = signatures_counting(row, state)
    if len(signatures) < state.threshold:
        gone = sorted({s.owner for s in row.signatures.all()} - set(signatures))
        raise Blocked(
            f"the Safe's owners or threshold changed since the signatures: {len(signatures)} of the "
            f"{state.threshold} needed are from current owners"
            + (f" ({', '.join(gone)} no longer own it)" if gone else "")
        )
    compliance = "not a rebalance"
    if row.purpose == SafeTxPurpose.REBALANCE:
        compliance = _policy_check(row, vault)
    chosen = dict(sorted(signatures.items(), key=lambda kv: int(kv[0], 16))[: state.threshold])
    return Checked(nonce=row.nonce, signatures=chosen, compliance=compliance)


def _policy_check(row: SafeTransaction, vault: Vault) -> str:
    """The policy active now, against the proposal; a rule that only says "not yet" waits."""
    proposal = _proposal(row)
    if proposal is None:
        return "no proposal"
    problem = _feasible(row, vault)
    if problem:
        raise Blocked(f"the signed transaction can no longer execute: {problem}; sign its rejection and propose again")
    current = {k: Decimal(v) for k, v in proposal_current_allocation(proposal=proposal).items()}
    result = proposal_compliance(proposal=proposal, current=current)
    if result.ok:
        return "compliant"
    until = result.clears_at()  # every violation a timing rule that says when it clears
    if until is not None:
        if until < proposal.expires_at:
            raise _TimingWait(until, result.summary())
        raise Blocked(f"compliance at execution: {result.summary()}; that is after the proposal expires")
    raise Blocked(f"compliance at execution: {result.summary()}")


class _TimingWait(Exception):
    def __init__(self, until: Any, why: str) -> None:
        super().__init__(why)
        self.until, self.why = until, why


def check_step(ctx: StepContext) -> Checked | Wait:
    try:
        return check(ctx)
    except _TimingWait as wait:
        return Wait(
            phase=Phase.CONFIRMING,
            resume_at=wait.until,
            info={"waiting": f"the policy's timing rule: {wait.why}", "until": wait.until.isoformat()},
        )


def send(ctx: StepContext) -> Sent:
    row = _row(ctx)
    checked = ctx.output("check", Checked)
    relay = safe_exec_request(row=row, signatures=checked.signatures, requester_run_id=ctx.run_id)
    failpoint("safe.after_request")  # tests: a worker killed before the step's journal commits
    return Sent(relay=str(relay.pk))


def confirm(ctx: StepContext) -> Settled | Wait:
    row = _row(ctx)
    status = safe_tx_settle(row)
    if status is None:
        return Wait(
            phase=Phase.CONFIRMING,
            resume_at=timezone.now() + timedelta(seconds=POLL_SECONDS),
            info={"waiting": "execTransaction to confirm"},
        )
    policy_commit_closed(row)  # a policy commit that failed or was rejected says its draft stays one
    row.refresh_from_db()
    if status == SafeTxStatus.FAILED:
        raise TerminalError(f"execTransaction failed: {row.error}")
    mined = row.relay.mined_hash if row.relay is not None else ""
    if row.purpose == SafeTxPurpose.OWNERS:
        vault_approvers_sync(row.vault)  # the approvers follow the Safe's owners
    if row.purpose == SafeTxPurpose.POLICY:
        policy_commit_settle(row)  # the draft becomes active, the vault names an installed module
    with transaction.atomic():
        proposal = (
            RebalanceProposal.objects.select_for_update(of=("self",))
            .select_related("proposer")
            .filter(proposal_id=row.proposal_id)
            .first()
        )
        if proposal is not None and row.purpose == SafeTxPurpose.REBALANCE:
            Vault.objects.filter(pk=row.vault_id).update(last_rebalance_at=timezone.now())
            if proposal.status != ProposalStatus.EXECUTED:
                proposal.status = ProposalStatus.EXECUTED
                proposal.execution_error = ""
                proposal.save(update_fields=["status", "execution_error"])
                if proposal.proposer is not None:
                    notify([proposal.proposer], f"{proposal.proposal_id} is executed", f"execTransaction {mined}")
    return Settled(status=status, transaction=mined)


def _record_stop(run: WorkflowRun, from_phase: str, to_phase: str) -> None:
    """A blocked, failed or dead-lettered execution leaves its reason on the proposal."""
    proposal = run.input.get("proposal")
    if to_phase in (Phase.BLOCKED, Phase.FAILED, Phase.DEAD_LETTER) and proposal:
        RebalanceProposal.objects.filter(pk=proposal).update(execution_error=run.error[:2000])
    elif from_phase == Phase.DEAD_LETTER and proposal:
        RebalanceProposal.objects.filter(pk=proposal).update(execution_error="")


def _readable_by(run: WorkflowRun, user: Any) -> bool:
    """Whoever may read the proposal; an owner change's run, whoever may read the vault's Safe
    transactions (operators and approvers, as the admin shows them)."""
    if run.input.get("proposal") is None:
        return bool(is_operator(user) or user.approver_of_vaults.exists())
    return proposals_visible_to(user=user).filter(pk=run.input.get("proposal")).exists()


@on_safe_tx_relayed
def _wake(row: SafeTransaction) -> None:
    run_id = WorkflowRun.objects.filter(idempotency_key=f"safe-exec:{row.pk}").values_list("pk", flat=True).first()
    if run_id is not None:
        workflow_resume(run_id=run_id, reason=f"Safe transaction {row.safe_tx_hash} relayed")


RETRY = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=30.0)

SAFE_EXECUTE = registry.register(
    Workflow(
        kind=SAFE_EXECUTE_WORKFLOW,
        on_transition=_record_stop,
        readable_by=_readable_by,
        steps=(
            Step("check", check_step, atomic=False, retry=RETRY, timeout=30),
            Step("send", send, retry=RETRY),
            Step("confirm", confirm, retry=RETRY),
        ),
    )
)
