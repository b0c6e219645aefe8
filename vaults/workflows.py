"""Flow A: the automated, policy-driven rebalance (docs/flow-a.md), as an engine workflow.

feed ─► verify ─► positions ─► allocate ─► check ─► decide ─┬─► intent ─► relay (its actions in sequence,
                                                            │              or one executeIntent through
                                                            │              the vault's policy module)
                                                            └─► proposal (Flow B), nothing relayed
Each step's output is journaled: the feed and policy version used, the on-chain positions, the
allocation, every compliance result, the intent or proposal, the transactions. What Flow B
shares with it is in vaults.services.rebalance."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from orchestrator.engine import Blocked, RetryPolicy, Step, StepContext, TerminalError, Wait, Workflow, registry
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_resume
from relayer.models import RelayTransaction
from relayer.services.requests import on_relay_finished
from vaults.models import ExecutionIntent, Vault
from vaults.module import ModuleIntent
from vaults.selectors import rebalance_inputs, vault_visible_to
from vaults.services.compliance import ComplianceRecord, PolicyRules, compliance_check
from vaults.services.feeds import ParsedFeed, feed_entries, feed_signer
from vaults.services.intents import StalePositions, intent_emit, intents_close_for_run, plan_actions
from vaults.services.module_intents import ModuleSeen, module_calls, module_intent, module_refusal, module_seen
from vaults.services.policies import PolicySnapshot
from vaults.services.rebalance import (
    REBALANCE_WORKFLOW,
    ApprovalRequest,
    ApprovalUnavailable,
    IntentSettled,
    PositionsSnapshot,
    approval_request,
    intent_for_progress,
    intent_progress,
    positions_snapshot,
)
from vaults.services.strategy import Limits, NoCompliantAllocation, Opportunity, allocate

# --- step outputs: each step's journaled JSON, field for key -------------------------------


@dataclass(frozen=True)
class Verified:
    """verify: the feed and the policy as later steps use them (both rows are immutable)."""

    feed: str
    feedDigest: str
    feedTime: str
    entries: list[dict[str, Any]]
    policy: int
    policyVersion: int
    rules: dict[str, Any]  # PolicyRules.as_json()
    approvalThreshold: str
    intentTtlSeconds: int
    strategy: str
    rpcUrl: str
    account: str
    asset: str
    protocols: dict[str, str]  # this chain's, name -> address
    intentNonce: int | None = None  # None: journaled by a verify from before it read the nonce
    module: str = ""  # the vault's policy module: the rebalance is one executeIntent through it
    committedHash: str = ""  # what this policy version committed to the module

    def policy_snapshot(self, *, vault_id: int) -> PolicySnapshot:
        return PolicySnapshot(
            pk=self.policy,
            vault_id=vault_id,
            version=self.policyVersion,
            approval_threshold=Decimal(self.approvalThreshold),
            intent_ttl_seconds=self.intentTtlSeconds,
        )


@dataclass(frozen=True)
class Allocated:
    """allocate: the strategy's target allocation, in % by protocol."""

    strategy: str
    allocation: dict[str, str]

    def target(self) -> dict[str, Decimal]:
        return {name: Decimal(pct) for name, pct in self.allocation.items()}


# decide's three outcomes; `decision` first, as the journal has always had it.
@dataclass(frozen=True, kw_only=True)
class NoRebalance:
    """decide: nothing to do."""

    decision: str = "none"
    reason: str


@dataclass(frozen=True, kw_only=True)
class Proposed:
    """decide: the rebalance moves more than the approval threshold; approvers decide."""

    decision: str = "proposal"
    proposal: str
    valueMoved: str
    approvalThreshold: str


@dataclass(frozen=True, kw_only=True)
class Intended:
    """decide: the signed intent relay executes."""

    decision: str = "intent"
    intent: str
    nonce: int
    valueMoved: str
    signature: str


@dataclass(frozen=True)
class Decided:
    """What relay reads of any of decide's outputs."""

    decision: str
    intent: str = ""


@dataclass(frozen=True)
class NothingRelayed:
    """relay, when decide made no intent: what it decided instead."""

    status: str


# --- steps -----------------------------------------------------------------------------------


def _vault(ctx: StepContext) -> Vault:
    return Vault.objects.select_related("chain", "account", "operator").get(pk=ctx.input["vault"])


def verify(ctx: StepContext) -> Verified:
    """Checks the feed against the vault's active policy and snapshots what later steps need:
    the feed and the policy are immutable, so they are read once, here (in one query, on the
    hot path of every feed: vaults.selectors), and journaled."""
    found = rebalance_inputs(vault_id=ctx.input["vault"], feed_id=ctx.input["feed"])
    if found is None:
        raise TerminalError(f"feed {ctx.input['feed']} is gone")
    feed, policy = found.feed, found.policy
    if policy is None:
        raise Blocked(f"{_vault(ctx).vault_id} has no active policy")
    if not policy.trusts_oracle:
        raise Blocked(f"oracle {feed.oracle_address} is not trusted by policy v{policy.version}")
    parsed = ParsedFeed(feed.oracle_address, feed.timestamp, feed.entries, feed.signature)
    if feed_signer(parsed) != feed.oracle_address:
        raise TerminalError("the feed's signature no longer verifies")
    if policy.in_flight is not None:
        # Its transactions are moving the funds right now: a plan made from the positions
        # would be wrong. The next feed (or beat) rebalances once it has settled.
        raise Blocked(f"intent #{policy.in_flight} of this vault is still executing")
    # The whitelist may name protocols of other chains too: it is read whole, as PolicyRules.of reads it.
    protocols = {name: address for name, address, chain_id, _ in policy.protocols if chain_id == policy.chain_id}
    whitelist = {name for name, _, _, whitelisted in policy.protocols if whitelisted}
    return Verified(
        feed=feed.id,
        feedDigest=feed.digest,
        feedTime=feed.timestamp.isoformat(),
        entries=feed.entries,
        policy=policy.pk,
        policyVersion=policy.version,
        rules=PolicyRules.of_fields(policy.rules, whitelist=whitelist).as_json(),
        approvalThreshold=str(policy.rules["approval_threshold"]),
        intentTtlSeconds=policy.rules["intent_ttl_seconds"],
        strategy=policy.strategy,
        rpcUrl=policy.rpc_url,
        account=policy.account,
        asset=policy.asset,
        protocols=protocols,
        intentNonce=policy.intent_nonce,
        module=policy.module,
        committedHash=policy.committed_hash,
    )


def read_positions(ctx: StepContext) -> PositionsSnapshot:
    """The on-chain positions, stamped with the vault's intent nonce as verify read it (with no
    intent in flight), just before: decide refuses the plan if another intent came since, so
    positions read while another run's intent moves the funds are never acted on."""
    seen = ctx.output("verify", Verified)
    nonce = seen.intentNonce
    if nonce is None:  # journaled by a verify from before it read the nonce
        nonce = Vault.objects.values_list("intent_nonce", flat=True).get(pk=ctx.input["vault"])
    held = positions_snapshot(
        rpc_url=seen.rpcUrl, account=seen.account, asset=seen.asset, protocols=seen.protocols, nonce=nonce
    )
    if not seen.module:
        return held
    found = module_seen(rpc_url=seen.rpcUrl, module=seen.module, asset=seen.asset)
    return dataclasses.replace(held, module=dataclasses.asdict(found))


def allocate_target(ctx: StepContext) -> Allocated:
    seen = ctx.output("verify", Verified)
    rules = PolicyRules.from_json(seen.rules)
    limits = Limits(whitelist=rules.whitelist, max_exposure_pct=rules.max_exposure_pct, max_risk=rules.max_risk)
    opportunities = [Opportunity(e.protocol, e.apy, e.risk) for e in feed_entries(seen.entries)]
    try:
        allocation = allocate(name=seen.strategy, opportunities=opportunities, limits=limits)
    except NoCompliantAllocation as exc:
        raise Blocked(f"no compliant allocation: {exc}") from exc
    return Allocated(strategy=seen.strategy, allocation={k: str(v) for k, v in allocation.items()})


def check(ctx: StepContext) -> ComplianceRecord:
    seen = ctx.output("verify", Verified)
    last_rebalance_at = Vault.objects.values_list("last_rebalance_at", flat=True).get(pk=ctx.input["vault"])
    result = compliance_check(
        rules=PolicyRules.from_json(seen.rules),
        allocation=ctx.output("allocate", Allocated).target(),
        risks={e.protocol: e.risk for e in feed_entries(seen.entries)},
        current=ctx.output("positions", PositionsSnapshot).allocation_pct(),
        feed_time=datetime.fromisoformat(seen.feedTime),
        last_rebalance_at=last_rebalance_at,
        now=timezone.now(),
    )
    if not result.ok:
        raise Blocked(f"compliance: {result.summary()}")
    return ComplianceRecord.of(result)


def decide(ctx: StepContext) -> NoRebalance | Proposed | Intended:
    seen, held = ctx.output("verify", Verified), ctx.output("positions", PositionsSnapshot)
    allocation = ctx.output("allocate", Allocated).target()
    plan = plan_actions(
        account=seen.account,
        protocols=seen.protocols,
        allocation=allocation,
        idle=int(held.idle),
        positions=held.amounts(),
    )
    if not plan.actions:
        return NoRebalance(reason="already at the target allocation")
    policy = seen.policy_snapshot(vault_id=ctx.input["vault"])
    if plan.value_moved > policy.approval_threshold:
        request = ApprovalRequest(
            vault_id=ctx.input["vault"], policy_id=policy.pk, feed_id=ctx.input["feed"], allocation=allocation
        )
        try:
            proposal_id = approval_request(request)
        except ApprovalUnavailable as exc:
            raise Blocked(f"the rebalance needs approval but no proposal can be made: {exc}") from exc
        return Proposed(
            proposal=proposal_id,
            valueMoved=str(plan.value_moved),
            approvalThreshold=str(policy.approval_threshold),
        )
    # The intent points at the feed and the policy by id (both rows are immutable, and verify
    # journaled what is signed of the policy); intent_emit reads the vault itself, under its lock.
    deadline = datetime.fromisoformat(seen.feedTime) + timedelta(seconds=policy.intent_ttl_seconds)
    through = None
    if seen.module:
        through = _through_module(ctx, seen, held, plan.actions, deadline)
    try:
        intent = intent_emit(
            vault_id=ctx.input["vault"],
            policy=policy,
            allocation=allocation,
            actions=plan.actions,
            feed_id=ctx.input["feed"],
            deadline=deadline,
            workflow_run_id=ctx.run_id,
            planned_at_nonce=held.atIntentNonce,
            module_intent=through,
        )
    except StalePositions as exc:
        raise Blocked(str(exc)) from exc
    return Intended(
        intent=str(intent.id), nonce=intent.nonce, valueMoved=str(plan.value_moved), signature=intent.signature
    )


def _through_module(
    ctx: StepContext, seen: Verified, held: PositionsSnapshot, actions: list[dict[str, Any]], deadline: datetime
) -> ModuleIntent:
    """The module's intent for the plan, checked off chain by the module's own rules first:
    what the module would refuse is never signed (docs/flow-a.md#through-the-policy-module)."""
    if held.module is None:  # positions journaled before the vault had its module
        raise Blocked("the positions were read without the vault's module; the next feed plans again")
    found = ModuleSeen(**held.module)
    vault = _vault(ctx)
    operator = vault.operator.address
    intent = module_intent(
        seen=found,
        chain_id=vault.chain.chain_id,
        calls=module_calls(actions=actions, asset=seen.asset),
        deadline=int(deadline.timestamp()),
    )
    refused = module_refusal(
        seen=found,
        intent=intent,
        operator=operator,
        asset=seen.asset,
        committed_hash=seen.committedHash,
        version=seen.policyVersion,
    )
    if refused:
        raise Blocked(f"the policy module would refuse this rebalance: {refused}")
    return intent


def relay(ctx: StepContext) -> NothingRelayed | IntentSettled | Wait:
    """Hands the intent's actions to the relayer as one sequence and waits for them."""
    decided = ctx.output("decide", Decided)
    if decided.decision != "intent":
        return NothingRelayed(status=decided.decision)
    return intent_progress(intent_for_progress(intent_id=decided.intent))


@on_relay_finished("intent")
def _intent_relay_finished(tx: RelayTransaction) -> None:
    """An intent's transaction finished: wake the run executing the intent (Flow A or B)."""
    run_id = ExecutionIntent.objects.filter(pk=tx.requested_by_id).values_list("workflow_run_id", flat=True).first()
    if run_id is not None:
        workflow_resume(run_id=run_id, reason=f"relay {tx.id} {tx.phase}")


def _readable_by(run: WorkflowRun, user: Any) -> bool:
    """A rebalance is readable by whoever may read its vault (docs/api.md#access)."""
    return vault_visible_to(user=user, vault_id=run.input.get("vault"))


def _mirror(run: WorkflowRun, from_phase: str, to_phase: str) -> None:
    """A run that stops short closes the intents it issued that can no longer move funds, so the
    vault is not held back by an intent nobody will execute."""
    if to_phase in (Phase.FAILED, Phase.BLOCKED, Phase.DEAD_LETTER):
        intents_close_for_run(run_id=run.pk, error=run.error)


RETRY = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=30.0)

FLOW_A = registry.register(
    Workflow(
        kind=REBALANCE_WORKFLOW,
        readable_by=_readable_by,
        on_transition=_mirror,
        steps=(
            Step("verify", verify, retry=RETRY),
            Step("positions", read_positions, atomic=False, retry=RETRY, timeout=30),
            Step("allocate", allocate_target, retry=RETRY),
            Step("check", check, retry=RETRY),
            Step("decide", decide, retry=RETRY),
            Step("relay", relay, retry=RETRY),
        ),
    )
)
