"""A rebalance, the part both flows share: Flow A (vaults.workflows) runs it from a feed, Flow B
(approvals.workflows) from an approved proposal. This module is what Flow B may use of Flow A:

- starting Flow A runs, when a feed arrives and from beat;
- the on-chain positions as a step output, and the allocation they make in %;
- one look at an intent being executed (request its actions, wait, finish);
- the hand-off of a rebalance that needs approval: the approvals app registers who takes it
  (`on_approval_needed`), so vaults names nothing of approvals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from orchestrator.engine import Blocked, RetryableError, TerminalError, Wait
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_start
from orchestrator.infra.errors import DomainError
from relayer.rpc import TRANSPORT_ERRORS, web3_for
from vaults.models import ExecutionIntent, IntentStatus, PolicyStatus, SignedFeed, Vault, VaultGrant, VaultPolicy
from vaults.selectors import intent_relays
from vaults.services.intents import IntentExpired, intent_advance

REBALANCE_WORKFLOW = "vault.rebalance"

# Relays wake the waiting run when they finish (vaults.workflows); this poll is only the
# fallback for a lost wake-up (a worker dying between a relay's commit and the wake-up).
SETTLE_POLL_SECONDS = settings.FLOW_SETTLE_POLL_SECONDS


# Flow A runs for a vault its account key holds, or for a Safe vault through its policy module.
# A Safe vault without one rebalances by proposals only: its account key can move nothing
# (docs/flow-b.md#safe-vaults).
FLOW_A_RUNS = Q(safe_address="") | ~Q(module_address="")


def rebalance_start(
    *,
    vault: Vault,
    feed: SignedFeed,
    correlation_id: str | None = None,
    new_feed: bool = False,
    owner: Any = None,
) -> tuple[WorkflowRun, bool]:
    """One run per (vault, feed): a feed seen twice, or beat and the feed's arrival racing,
    start nothing more. Returns (run, created). `new_feed`: the feed was stored in this
    transaction, so no run can have its key yet. `owner`: the API client whose request starts
    the run."""
    return workflow_start(
        kind=REBALANCE_WORKFLOW,
        input={"vault": vault.pk, "feed": str(feed.id)},
        idempotency_key=f"flow-a:{vault.pk}:{feed.id}",
        correlation_id=correlation_id,
        new_key=new_feed,
        owner=owner,
    )


def rebalances_start_for_feed(*, feed: SignedFeed, client: Any = None) -> list[WorkflowRun]:
    """Flow A for every auto-rebalancing vault whose active policy trusts the feed's oracle.
    The feed is new: this runs in the transaction that stored it.

    `client`, the API client that posted the feed, owns the runs of the vaults it may read;
    the others start without an owner, as a pulled feed's do, so posting a feed shows a client
    nothing of a vault it was not granted (docs/api.md#access)."""
    # Only the vaults' ids: rebalance_start needs nothing else, and this runs on every feed.
    vaults = Vault.objects.filter(
        FLOW_A_RUNS, auto_rebalance=True, policies__status=PolicyStatus.ACTIVE, policies__oracles=feed.oracle_id
    ).only("pk")
    if client is not None and not client.is_staff:
        # In the same statement: one grant per (client, vault), read as a flag.
        vaults = vaults.annotate(granted=Exists(VaultGrant.objects.filter(vault=OuterRef("pk"), client=client)))
    runs = []
    for vault in vaults:
        owner = client if client is not None and (client.is_staff or getattr(vault, "granted", False)) else None
        runs.append(rebalance_start(vault=vault, feed=feed, new_feed=True, owner=owner)[0])
    return runs


def rebalances_dispatch(*, now: datetime | None = None) -> int:
    """Beat's pass: each auto-rebalancing vault gets a run for its newest usable feed (one its
    policy trusts and is young enough). Returns how many runs were new."""
    now = now or timezone.now()
    started = 0
    policies = VaultPolicy.objects.filter(
        Q(vault__safe_address="") | ~Q(vault__module_address=""), status=PolicyStatus.ACTIVE, vault__auto_rebalance=True
    ).select_related("vault")
    for policy in policies:
        feed = (
            SignedFeed.objects.filter(
                oracle__in=policy.oracles.filter(active=True),
                timestamp__gte=now - timedelta(seconds=policy.max_feed_age_seconds),
            )
            .order_by("-timestamp")
            .first()
        )
        if feed is None:
            continue
        _, created = rebalance_start(vault=policy.vault, feed=feed)
        started += created
    return started


# --- the positions ---------------------------------------------------------------------------


def settle_wait(waiting: str) -> Wait:
    """Wait for transactions to settle: woken when a relay finishes, polled as a fallback."""
    return Wait(
        phase=Phase.CONFIRMING,
        resume_at=timezone.now() + timedelta(seconds=SETTLE_POLL_SECONDS),
        info={"waiting": waiting},
    )


@dataclass(frozen=True)
class PositionsSnapshot:
    """The on-chain positions as the positions step of either flow journals them: amounts in
    the asset's base units (as strings: uint256), the vault's intent nonce when they were read,
    and the protocols' addresses by name. Field names are the journal's keys."""

    idle: str
    protocols: dict[str, str]
    total: str
    atIntentNonce: int
    addresses: dict[str, str]
    module: dict[str, Any] | None = None  # through a policy module: module_intents.ModuleSeen, as JSON

    def amounts(self) -> dict[str, int]:
        """What each protocol holds, in base units."""
        return {name: int(amount) for name, amount in self.protocols.items()}

    def allocation_pct(self) -> dict[str, Decimal]:
        """The allocation in % by protocol and idle (empty for an empty vault): what
        compliance measures turnover from."""
        total = Decimal(self.total)
        if total == 0:
            return {}
        current = {name: Decimal(v) * 100 / total for name, v in self.protocols.items()}
        current["idle"] = Decimal(self.idle) * 100 / total
        return current


def positions_snapshot(
    *, rpc_url: str, account: str, asset: str, protocols: dict[str, str], nonce: int
) -> PositionsSnapshot:
    """The on-chain positions (Flow A and Flow B), with the vault's intent nonce at the time: a
    plan made from them is refused if another intent came since."""
    from vaults.onchain import positions

    try:
        found = positions(w3=web3_for(rpc_url), account=account, asset=asset, protocols=protocols)
    except TRANSPORT_ERRORS as exc:
        raise RetryableError(f"chain at {rpc_url} unreachable reading positions") from exc
    return PositionsSnapshot(
        idle=str(found.idle),
        protocols={k: str(v) for k, v in found.by_protocol.items()},
        total=str(found.total),
        atIntentNonce=nonce,
        addresses=protocols,
    )


# --- an intent being executed ----------------------------------------------------------------

# What intent_progress reads of an intent and the rows around it: not the vault's other
# columns, nor the run's journal (the JSON of every step's output), only its correlation id.
# The chain and the signer are whole rows: they are what relay_request is given.
INTENT_PROGRESS_FIELDS = (
    "id",
    "nonce",
    "actions",
    "deadline",
    "signature",
    "module_intent",
    "vault__chain",
    "vault__account",
    "workflow_run__correlation_id",
)


def intent_for_progress(*, intent_id: Any) -> ExecutionIntent:
    """The intent as intent_progress needs it, in one query (it runs on every wake-up)."""
    return (
        ExecutionIntent.objects.select_related("vault__chain", "vault__account", "workflow_run")
        .only(*INTENT_PROGRESS_FIELDS)
        .get(pk=intent_id)
    )


@dataclass(frozen=True)
class IntentSettled:
    """The relay step's output once the intent's transactions are done: its final status and
    the hashes that mined, in the order of its actions."""

    status: str
    transactions: list[str]


def intent_progress(intent: ExecutionIntent) -> IntentSettled | Wait:
    """One look at an intent being executed (Flow A and Flow B share it): request its actions
    (the first look), wait while they are under way, finish when they have."""
    try:
        status = intent_advance(intent=intent)
    except IntentExpired as exc:
        raise Blocked(str(exc)) from exc
    if status is None:
        return settle_wait("intent transactions")
    if status == IntentStatus.FAILED:
        raise TerminalError(f"intent #{intent.nonce} failed: {ExecutionIntent.objects.get(pk=intent.pk).error}")
    hashes = list(intent_relays(intent_id=intent.pk).values_list("mined_hash", flat=True))
    return IntentSettled(status=status, transactions=hashes)


# --- a rebalance that needs approval ---------------------------------------------------------


@dataclass(frozen=True)
class ApprovalRequest:
    """A rebalance Flow A may not make alone: it moves more than the policy's approval
    threshold. Whoever takes it (the approvals app) turns it into a proposal."""

    vault_id: int
    policy_id: int
    feed_id: str
    allocation: dict[str, Decimal]


class ApprovalUnavailable(DomainError):
    """The rebalance needs approval but no proposal can be made for it."""

    code = "approval_unavailable"
    http_status = 422


ApprovalHandler = Callable[[ApprovalRequest], str]
_approval_handler: ApprovalHandler | None = None  # one app takes them: approvals


def on_approval_needed(handler: ApprovalHandler) -> ApprovalHandler:
    """Registers who takes rebalances that need approval (a decorator; the last one wins). It
    returns the id of what it made (a proposal's) and raises ApprovalUnavailable when it cannot
    make one."""
    global _approval_handler
    _approval_handler = handler
    return handler


def approval_request(request: ApprovalRequest) -> str:
    """Hands a rebalance to approval. Raises ApprovalUnavailable."""
    if _approval_handler is None:
        raise ApprovalUnavailable("no app takes rebalances that need approval")
    return _approval_handler(request)
