"""Flow A: the automated, policy-driven rebalance (seed 000), as an engine workflow.

feed ─► verify ─► positions ─► allocate ─► check ─► decide ─┬─► intent ─► relay (its actions in sequence)
                                                            └─► proposal (Flow B), nothing relayed
Each step's output is journaled: the feed and policy version used, the on-chain positions, the
allocation, every compliance result, the intent or proposal, the transactions."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.utils import timezone

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
from orchestrator.engine.models import Phase
from orchestrator.engine.services import workflow_resume
from relayer.models import RelayTransaction
from relayer.rpc import TRANSPORT_ERRORS, web3_for
from relayer.services.requests import on_relay_finished
from vaults.models import (
    ExecutionIntent,
    IntentStatus,
    SignedFeed,
    Vault,
    VaultPolicy,
)
from vaults.selectors import rebalance_inputs
from vaults.services.compliance import PolicyRules, compliance_check
from vaults.services.feeds import ParsedFeed, feed_entries, feed_signer
from vaults.services.intents import (
    IntentExpired,
    StalePositions,
    intent_advance,
    intent_emit,
    plan_actions,
)
from vaults.services.rebalance import REBALANCE_WORKFLOW
from vaults.services.strategy import Limits, NoCompliantAllocation, Opportunity, allocate

# Relays wake the waiting run when they finish (on_relay_finished below); this poll is only
# the fallback for a lost wake-up (a worker dying between a relay's commit and the wake-up).
SETTLE_POLL_SECONDS = settings.FLOW_SETTLE_POLL_SECONDS


def _vault(ctx: StepContext) -> Vault:
    return Vault.objects.select_related("chain", "account", "operator").get(pk=ctx.input["vault"])


def _feed(ctx: StepContext) -> SignedFeed:
    return SignedFeed.objects.select_related("oracle").get(pk=ctx.input["feed"])


def _policy(ctx: StepContext) -> VaultPolicy:
    return VaultPolicy.objects.get(pk=ctx.outputs["verify"]["policy"])


def verify(ctx: StepContext) -> dict[str, Any]:
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
    return {
        "feed": feed.id,
        "feedDigest": feed.digest,
        "feedTime": feed.timestamp.isoformat(),
        "entries": feed.entries,
        "policy": policy.pk,
        "policyVersion": policy.version,
        "rules": PolicyRules.of(SimpleNamespace(**policy.rules), whitelist=whitelist).as_json(),
        "approvalThreshold": str(policy.rules["approval_threshold"]),
        "intentTtlSeconds": policy.rules["intent_ttl_seconds"],
        "strategy": policy.strategy,
        "rpcUrl": policy.rpc_url,
        "account": policy.account,
        "asset": policy.asset,
        "protocols": protocols,
        "intentNonce": policy.intent_nonce,
    }


def positions_snapshot(
    *, rpc_url: str, account: str, asset: str, protocols: dict[str, str], nonce: int
) -> dict[str, Any]:
    """The on-chain positions as a journaled step output (Flow A and Flow B), with the vault's
    intent nonce at the time: a plan made from them is refused if another intent came since."""
    from vaults.onchain import positions

    try:
        found = positions(w3=web3_for(rpc_url), account=account, asset=asset, protocols=protocols)
    except TRANSPORT_ERRORS as exc:
        raise RetryableError(f"chain at {rpc_url} unreachable reading positions") from exc
    return {
        "idle": str(found.idle),
        "protocols": {k: str(v) for k, v in found.by_protocol.items()},
        "total": str(found.total),
        "atIntentNonce": nonce,
        "addresses": protocols,
    }


def read_positions(ctx: StepContext) -> dict[str, Any]:
    """The on-chain positions, stamped with the vault's intent nonce as verify read it (with no
    intent in flight), just before: decide refuses the plan if another intent came since, so
    positions read while another run's intent moves the funds are never acted on."""
    seen = ctx.outputs["verify"]
    nonce = seen.get("intentNonce")
    if nonce is None:  # journaled by a verify from before it read the nonce
        nonce = Vault.objects.values_list("intent_nonce", flat=True).get(pk=ctx.input["vault"])
    return positions_snapshot(
        rpc_url=seen["rpcUrl"],
        account=seen["account"],
        asset=seen["asset"],
        protocols=seen["protocols"],
        nonce=nonce,
    )


def allocate_target(ctx: StepContext) -> dict[str, Any]:
    seen = ctx.outputs["verify"]
    rules = PolicyRules.from_json(seen["rules"])
    limits = Limits(whitelist=rules.whitelist, max_exposure_pct=rules.max_exposure_pct, max_risk=rules.max_risk)
    opportunities = [Opportunity(e.protocol, e.apy, e.risk) for e in feed_entries(seen["entries"])]
    try:
        allocation = allocate(name=seen["strategy"], opportunities=opportunities, limits=limits)
    except NoCompliantAllocation as exc:
        raise Blocked(f"no compliant allocation: {exc}") from exc
    return {"strategy": seen["strategy"], "allocation": {k: str(v) for k, v in allocation.items()}}


def _current_pct(held: dict[str, Any]) -> dict[str, Decimal]:
    total = Decimal(held["total"])
    if total == 0:
        return {}
    current = {name: Decimal(v) * 100 / total for name, v in held["protocols"].items()}
    current["idle"] = Decimal(held["idle"]) * 100 / total
    return current


def check(ctx: StepContext) -> dict[str, Any]:
    seen = ctx.outputs["verify"]
    last_rebalance_at = Vault.objects.values_list("last_rebalance_at", flat=True).get(pk=ctx.input["vault"])
    result = compliance_check(
        rules=PolicyRules.from_json(seen["rules"]),
        allocation={k: Decimal(v) for k, v in ctx.outputs["allocate"]["allocation"].items()},
        risks={e.protocol: e.risk for e in feed_entries(seen["entries"])},
        current=_current_pct(ctx.outputs["positions"]),
        feed_time=datetime.fromisoformat(seen["feedTime"]),
        last_rebalance_at=last_rebalance_at,
        now=timezone.now(),
    )
    if not result.ok:
        raise Blocked(f"compliance: {result.summary()}")
    return result.as_dict()


def decide(ctx: StepContext) -> dict[str, Any]:
    seen, held = ctx.outputs["verify"], ctx.outputs["positions"]
    allocation = {k: Decimal(v) for k, v in ctx.outputs["allocate"]["allocation"].items()}
    plan = plan_actions(
        account=seen["account"],
        protocols=seen["protocols"],
        allocation=allocation,
        idle=int(held["idle"]),
        positions={k: int(v) for k, v in held["protocols"].items()},
    )
    if not plan.actions:
        return {"decision": "none", "reason": "already at the target allocation"}
    if plan.value_moved > Decimal(seen["approvalThreshold"]):
        from approvals.services import ProposalInvalid, proposal_create

        vault, feed, policy = _vault(ctx), _feed(ctx), _policy(ctx)
        try:
            proposal = proposal_create(vault=vault, policy=policy, allocation=allocation, feed=feed, proposer=None)
        except ProposalInvalid as exc:
            raise Blocked(f"the rebalance needs approval but no proposal can be made: {exc}") from exc
        return {
            "decision": "proposal",
            "proposal": proposal.proposal_id,
            "valueMoved": str(plan.value_moved),
            "approvalThreshold": str(policy.approval_threshold),
        }
    # The intent points at the feed and the policy (and signs the policy's version): both rows
    # are immutable and verify journaled what is needed of them, so they are not read again.
    # intent_emit reads the vault itself, under its lock.
    feed_time = datetime.fromisoformat(seen["feedTime"])
    try:
        intent = intent_emit(
            vault=Vault(pk=ctx.input["vault"]),
            policy=VaultPolicy(pk=seen["policy"], vault_id=ctx.input["vault"], version=seen["policyVersion"]),
            allocation=allocation,
            actions=plan.actions,
            feed=SignedFeed(pk=ctx.input["feed"], timestamp=feed_time),
            deadline=feed_time + timedelta(seconds=seen["intentTtlSeconds"]),
            workflow_run_id=ctx.run_id,
            planned_at_nonce=held["atIntentNonce"],
        )
    except StalePositions as exc:
        raise Blocked(str(exc)) from exc
    return {
        "decision": "intent",
        "intent": str(intent.id),
        "nonce": intent.nonce,
        "valueMoved": str(plan.value_moved),
        "signature": intent.signature,
    }


def _intent(ctx: StepContext) -> ExecutionIntent | None:
    decided = ctx.outputs["decide"]
    if decided["decision"] != "intent":
        return None
    # Runs on every wake-up while the intent executes. Of the rows around it, only what
    # intent_progress uses: not the vault's other columns, nor the run's journal (the JSON of
    # every step's output), only its correlation id.
    return (
        ExecutionIntent.objects.select_related("vault__chain", "vault__account", "workflow_run")
        .only(*INTENT_PROGRESS_FIELDS)
        .get(pk=decided["intent"])
    )


# The chain and the signer are whole rows: they are what relay_request is given.
INTENT_PROGRESS_FIELDS = (
    "id",
    "nonce",
    "actions",
    "deadline",
    "vault__chain",
    "vault__account",
    "workflow_run__correlation_id",
)


def intent_progress(intent: ExecutionIntent) -> dict[str, Any] | Wait:
    """One look at an intent being executed (Flow A and Flow B share it): request its actions
    (the first look), wait while they are under way, finish when they have."""
    try:
        status = intent_advance(intent=intent)
    except IntentExpired as exc:
        raise Blocked(str(exc)) from exc
    if status is None:
        return Wait(
            phase=Phase.CONFIRMING,
            resume_at=timezone.now() + timedelta(seconds=SETTLE_POLL_SECONDS),
            info={"waiting": "intent transactions"},
        )
    if status == IntentStatus.FAILED:
        raise TerminalError(f"intent #{intent.nonce} failed: {ExecutionIntent.objects.get(pk=intent.pk).error}")
    hashes = list(
        RelayTransaction.objects.filter(requested_by_kind="intent", requested_by_id=str(intent.id))
        .order_by("nonce")
        .values_list("mined_hash", flat=True)
    )
    return {"status": status, "transactions": hashes}


def relay(ctx: StepContext) -> dict[str, Any] | Wait:
    """Hands the intent's actions to the relayer as one sequence and waits for them."""
    intent = _intent(ctx)
    if intent is None:
        return {"status": ctx.outputs["decide"]["decision"]}
    return intent_progress(intent)


@on_relay_finished("intent")
def _intent_relay_finished(tx: RelayTransaction) -> None:
    """An intent's transaction finished: wake the run executing the intent (Flow A or B)."""
    run_id = ExecutionIntent.objects.filter(pk=tx.requested_by_id).values_list("workflow_run_id", flat=True).first()
    if run_id is not None:
        workflow_resume(run_id=run_id, reason=f"relay {tx.id} {tx.phase}")


RETRY = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=30.0)

FLOW_A = registry.register(
    Workflow(
        kind=REBALANCE_WORKFLOW,
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
