"""Flow B's execution: an approved proposal becomes one ExecutionIntent, relayed on chain.

positions ─► check (against the policy active now) ─► emit (exactly once) ─► relay

A timing rule that only says "not yet" (the minimum interval, the UTC window) is a durable
wait: `check` returns a Wait until the time the rule names, the engine resumes the run then
(its due_at survives a worker's death), and `check` runs again against the policy active at
that moment. Only a wait that would end after the proposal expires is a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.selectors import proposals_visible_to
from approvals.services import EXECUTE_WORKFLOW, ProposalInvalid, notify, proposal_compliance, proposal_create
from orchestrator.engine import Blocked, RetryableError, RetryPolicy, Step, StepContext, Wait, Workflow, registry
from orchestrator.engine.models import Phase, WorkflowRun
from vaults.models import PolicyStatus, Protocol, SignedFeed, Vault, VaultPolicy
from vaults.services.compliance import ComplianceRecord, ComplianceResult, PolicyRules, timing_violations
from vaults.services.intents import StalePositions, intent_emit, intent_in_flight, intents_close_for_run, plan_actions
from vaults.services.policies import PolicySnapshot
from vaults.services.rebalance import (
    ApprovalRequest,
    ApprovalUnavailable,
    IntentSettled,
    PositionsSnapshot,
    intent_for_progress,
    intent_progress,
    on_approval_needed,
    positions_snapshot,
    settle_wait,
)


@on_approval_needed
def propose_rebalance(request: ApprovalRequest) -> str:
    """Flow A's rebalance above the policy's approval threshold becomes a proposal for the
    vault's approvers (Flow A journals its id and stops there)."""
    vault = Vault.objects.select_related("chain", "account", "operator").get(pk=request.vault_id)
    feed = SignedFeed.objects.select_related("oracle").get(pk=request.feed_id)
    policy = VaultPolicy.objects.get(pk=request.policy_id)
    try:
        proposal = proposal_create(vault=vault, policy=policy, allocation=request.allocation, feed=feed, proposer=None)
    except ProposalInvalid as exc:
        raise ApprovalUnavailable(str(exc)) from exc
    return proposal.proposal_id


def _proposal(ctx: StepContext) -> RebalanceProposal:
    return RebalanceProposal.objects.select_related("vault__chain", "vault__account", "feed").get(
        pk=ctx.input["proposal"]
    )


# --- step outputs: each step's journaled JSON, field for key (positions: PositionsSnapshot,
# check: ComplianceRecord, relay: IntentSettled) --------------------------------------------


@dataclass(frozen=True)
class Emitted:
    """emit: the intent it signed."""

    intent: str
    nonce: int
    valueMoved: str
    policyVersion: int


@dataclass(frozen=True)
class EmittedBefore:
    """emit, run again after it had emitted: the intent the proposal keeps."""

    intent: str
    note: str = "emitted before"


@dataclass(frozen=True)
class IntentOf:
    """What relay reads of either of emit's outputs."""

    intent: str


# --- steps -----------------------------------------------------------------------------------


def read_positions(ctx: StepContext) -> PositionsSnapshot | Wait:
    proposal = _proposal(ctx)
    vault = proposal.vault
    if proposal.intent_id is None and intent_in_flight(vault_id=vault.pk) is not None:
        # Another intent is moving the funds: an approved rebalance waits for it to settle.
        return settle_wait("the vault's previous intent")
    if proposal.intent_id is None:
        # "Not yet" is waited out before the positions are read, so check sees fresh ones.
        timing = _timing_wait(proposal)
        if timing is not None:
            return timing
    return positions_snapshot(
        rpc_url=vault.chain.rpc_url,
        account=vault.account.address,
        asset=vault.asset_address,
        protocols={p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)},
        nonce=vault.intent_nonce,
    )


TIMING_WAIT = "the policy's timing rule"


def _timing_wait(proposal: RebalanceProposal) -> Wait | None:
    """A wait until the policy's timing rules allow the rebalance, when they say when and that
    is before the proposal expires; None otherwise (check then decides, with the rest)."""
    policy = proposal.vault.policies.filter(status=PolicyStatus.ACTIVE).first()
    if policy is None:
        return None
    result = ComplianceResult(
        timing_violations(
            rules=PolicyRules.of(policy), last_rebalance_at=proposal.vault.last_rebalance_at, now=timezone.now()
        )
    )
    until = result.clears_at()
    if until is None or until >= proposal.expires_at:
        return None
    return Wait(
        phase=Phase.CONFIRMING,
        resume_at=until,
        info={
            "waiting": f"{TIMING_WAIT}: {'; '.join(v.message for v in result.violations)}",
            "until": until.astimezone(UTC).isoformat(),
        },
    )


def check(ctx: StepContext) -> ComplianceRecord | Wait:
    """Execution re-runs the compliance check against the policy active at this moment.
    Violations that are all timing rules clearing before the proposal expires make it wait
    until then (and check afresh); anything else, or a wait past the expiry, is Blocked."""
    proposal = _proposal(ctx)
    current = ctx.output("positions", PositionsSnapshot).allocation_pct()
    result = proposal_compliance(proposal=proposal, current=current)
    if result.ok or proposal.intent_id is not None:
        return ComplianceRecord.of(result)
    until = result.clears_at()
    if until is None:
        raise Blocked(f"compliance at execution: {result.summary()}")
    if until >= proposal.expires_at:
        raise Blocked(
            f"compliance at execution: {result.summary()}; the timing rule allows it at {utc_text(until)}, "
            f"after the proposal expires ({utc_text(proposal.expires_at)})"
        )
    return Wait(
        phase=Phase.CONFIRMING,
        resume_at=until,
        info={
            "waiting": f"{TIMING_WAIT}: {'; '.join(v.message for v in result.violations)}",
            "until": until.astimezone(UTC).isoformat(),
        },
    )


def utc_text(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def emit(ctx: StepContext) -> Emitted | EmittedBefore:
    """The intent, exactly once: the proposal row is locked and keeps the intent it got."""
    held = ctx.output("positions", PositionsSnapshot)
    proposal = (
        RebalanceProposal.objects.select_for_update().select_related("vault__account").get(pk=ctx.input["proposal"])
    )
    if proposal.intent_id is not None:
        return EmittedBefore(intent=str(proposal.intent_id))
    vault = proposal.vault
    policy = vault.policies.get(status=PolicyStatus.ACTIVE)
    allocation = {k: Decimal(v) for k, v in proposal.proposed_allocations.items()}
    plan = plan_actions(
        account=vault.account.address,
        protocols=held.addresses,
        allocation=allocation,
        idle=int(held.idle),
        positions=held.amounts(),
    )
    if not plan.actions:
        raise Blocked("the vault already holds the proposed allocation; nothing to execute")
    try:
        intent = intent_emit(
            vault_id=vault.pk,
            policy=PolicySnapshot.of(policy),
            allocation=allocation,
            actions=plan.actions,
            feed_id=proposal.feed_id,
            deadline=timezone.now() + timedelta(seconds=policy.intent_ttl_seconds),
            proposal_id=proposal.proposal_id,
            workflow_run_id=ctx.run_id,
            planned_at_nonce=held.atIntentNonce,
        )
    except StalePositions as exc:
        raise RetryableError(f"positions changed while planning: {exc}") from exc
    proposal.intent = intent
    proposal.save(update_fields=["intent"])
    return Emitted(
        intent=str(intent.id), nonce=intent.nonce, valueMoved=str(plan.value_moved), policyVersion=policy.version
    )


def relay(ctx: StepContext) -> IntentSettled | Wait:
    intent = intent_for_progress(intent_id=ctx.output("emit", IntentOf).intent)
    progress = intent_progress(intent)
    if isinstance(progress, IntentSettled):
        with transaction.atomic():
            proposal = (
                RebalanceProposal.objects.select_for_update(of=("self",))
                .select_related("proposer")
                .get(pk=ctx.input["proposal"])
            )
            if proposal.status != ProposalStatus.EXECUTED:
                proposal.status = ProposalStatus.EXECUTED
                proposal.save(update_fields=["status"])
                if proposal.proposer is not None:
                    notify(
                        [proposal.proposer],
                        f"{proposal.proposal_id} is executed",
                        f"Its intent #{intent.nonce} confirmed: {', '.join(progress.transactions)}",
                    )
    return progress


def _record_stop(run: WorkflowRun, from_phase: str, to_phase: str) -> None:
    """A blocked, failed or dead-lettered execution leaves its reason on the proposal, and
    closes its intent when that can no longer move funds (as Flow A's runs do)."""
    if to_phase in (Phase.BLOCKED, Phase.FAILED, Phase.DEAD_LETTER):
        RebalanceProposal.objects.filter(pk=run.input["proposal"]).update(execution_error=run.error[:2000])
        intents_close_for_run(run_id=run.pk, error=run.error)
    elif from_phase == Phase.DEAD_LETTER:
        RebalanceProposal.objects.filter(pk=run.input["proposal"]).update(execution_error="")


RETRY = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=30.0)


def _readable_by(run: WorkflowRun, user: Any) -> bool:
    """An execution is readable by whoever may read its proposal (docs/api.md#access)."""
    return proposals_visible_to(user=user).filter(pk=run.input.get("proposal")).exists()


FLOW_B = registry.register(
    Workflow(
        kind=EXECUTE_WORKFLOW,
        on_transition=_record_stop,
        readable_by=_readable_by,
        steps=(
            Step("positions", read_positions, atomic=False, retry=RETRY, timeout=30),
            Step("check", check, retry=RETRY),
            Step("emit", emit, retry=RETRY),
            Step("relay", relay, retry=RETRY),
        ),
    )
)
