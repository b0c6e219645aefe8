"""ExecutionIntents: the signed instruction to move a vault to a target allocation.

An intent is EIP-712 typed data signed by the vault's operator key:

    domain  {"name": "Vault Orchestrator Intent", "version": "1", "chainId": <vault chain>}
    types   ExecutionIntent(string vaultId, uint256 nonce, Action[] actions, uint256 deadline,
                            address issuer, uint256 policyVersion)
            Action(string kind, address protocol, uint256 amount, bytes data)

Nonces are strictly increasing per vault: taken under the vault's row lock, unique in SQL."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from django.utils import timezone

from orchestrator.infra.eip712 import typed_data_signable
from orchestrator.infra.errors import DomainError
from relayer.keys import key_manager
from relayer.models import RelayTransaction, TxPhase
from relayer.services.batches import OPEN_PHASES
from relayer.services.requests import relay_request
from vaults.models import IN_FLIGHT, ExecutionIntent, IntentRelay, IntentStatus, Vault
from vaults.module import ModuleIntent, execute_intent_calldata, intent_sign_with_key, module_error
from vaults.selectors import intent_relays
from vaults.services.module_intents import module_intent_json, module_intent_of
from vaults.services.policies import PolicySnapshot
from vaults.services.typed_data import typed_data_hash

logger = logging.getLogger("vaults.intents")

INTENT_TYPES = {
    "ExecutionIntent": [
        {"name": "vaultId", "type": "string"},
        {"name": "nonce", "type": "uint256"},
        {"name": "actions", "type": "Action[]"},
        {"name": "deadline", "type": "uint256"},
        {"name": "issuer", "type": "address"},
        {"name": "policyVersion", "type": "uint256"},
    ],
    "Action": [
        {"name": "kind", "type": "string"},
        {"name": "protocol", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "data", "type": "bytes"},
    ],
}


class StalePositions(DomainError):
    """Another intent was issued for the vault after the positions a plan was made from."""

    code = "stale_positions"
    http_status = 409


def intent_in_flight(*, vault_id: int) -> ExecutionIntent | None:
    """The vault's intent still being executed, if any: until it settles, on-chain positions
    are in motion and no new plan can be made from them."""
    return ExecutionIntent.objects.filter(vault_id=vault_id, status__in=IN_FLIGHT).order_by("-nonce").first()


class IntentExpired(DomainError):
    """The intent's deadline passed before it was relayed; it never will be."""

    code = "intent_expired"
    http_status = 409


@dataclass(frozen=True)
class Plan:
    """What a target allocation means in token amounts, from the current positions."""

    actions: list[dict[str, Any]]
    value_moved: int


def plan_actions(
    *, account: str, protocols: dict[str, str], allocation: dict[str, Decimal], idle: int, positions: dict[str, int]
) -> Plan:
    """Withdrawals first (they free the funds), then deposits, each sized so the account ends
    at the target allocation of its total value, rounded down to whole base units.
    `protocols` maps names to protocol vault addresses."""
    from vaults.onchain import deposit_calldata, withdraw_calldata

    total = idle + sum(positions.values())
    withdrawals, deposits = [], []
    for name in sorted(set(allocation) | set(positions)):
        if name not in protocols:
            continue
        target = int((Decimal(total) * allocation.get(name, Decimal(0)) / 100).to_integral_value(ROUND_DOWN))
        delta = target - positions.get(name, 0)
        address = protocols[name]
        if delta < 0:
            withdrawals.append(
                {
                    "kind": "withdraw",
                    "protocol": name,
                    "address": address,
                    "amount": str(-delta),
                    "calldata": withdraw_calldata(-delta, account, account),
                }
            )
        elif delta > 0:
            deposits.append(
                {
                    "kind": "deposit",
                    "protocol": name,
                    "address": address,
                    "amount": str(delta),
                    "calldata": deposit_calldata(delta, account),
                }
            )
    moved = max(sum(int(a["amount"]) for a in withdrawals), sum(int(a["amount"]) for a in deposits))
    return Plan(actions=withdrawals + deposits, value_moved=moved)


def intent_message(intent: ExecutionIntent, *, policy_version: int | None = None) -> dict[str, Any]:
    """The intent as the typed-data message its operator signs; `policy_version` when the
    caller has it (else it is read from the intent's policy)."""
    return {
        "vaultId": intent.vault.vault_id,
        "nonce": intent.nonce,
        "actions": [
            {"kind": a["kind"], "protocol": a["address"], "amount": int(a["amount"]), "data": a["calldata"]}
            for a in intent.actions
        ],
        "deadline": int(intent.deadline.timestamp()),
        "issuer": intent.issuer,
        "policyVersion": intent.policy.version if policy_version is None else policy_version,
    }


def intent_domain(vault: Vault) -> dict[str, Any]:
    return {"name": "Vault Orchestrator Intent", "version": "1", "chainId": vault.chain.chain_id}


def intent_emit(
    *,
    vault_id: int,
    policy: PolicySnapshot,
    allocation: dict[str, Decimal],
    actions: list[dict[str, Any]],
    deadline: datetime,
    feed_id: Any = None,
    proposal_id: str = "",
    workflow_run_id: Any = None,
    planned_at_nonce: int | None = None,
    module_intent: ModuleIntent | None = None,
) -> ExecutionIntent:
    """Takes the vault's next nonce, signs the intent with the operator key and stores it.
    Must run in a transaction: the vault row stays locked until it commits. With
    `planned_at_nonce` (the vault's intent nonce when the positions were read), raises
    StalePositions if another intent was issued since: the plan was made from old positions.
    The intent points at the policy and the feed by id: both rows are immutable, and what is
    signed of the policy (its version) is in the snapshot, so neither is read here.
    With `module_intent` (the vault's policy module's, built and checked by the caller), that
    is what the operator signs and what is sent: the actions are kept for the record."""
    # Only the vault's row: the chain's and the operator key's are shared by many vaults, and
    # locking them would queue every intent of the chain (and FK inserts) behind this one.
    # NO KEY: rows that merely reference the vault (its intents) need not wait.
    locked = (
        Vault.objects.select_for_update(of=("self",), no_key=True).select_related("operator", "chain").get(pk=vault_id)
    )
    if planned_at_nonce is not None and locked.intent_nonce != planned_at_nonce:
        raise StalePositions(
            f"intent #{locked.intent_nonce} was issued after the positions were read (at #{planned_at_nonce})"
        )
    locked.intent_nonce += 1
    locked.last_rebalance_at = timezone.now()
    locked.save(update_fields=["intent_nonce", "last_rebalance_at"])
    intent = ExecutionIntent(
        vault=locked,
        nonce=locked.intent_nonce,
        actions=actions,
        allocation={k: str(v) for k, v in allocation.items()},
        deadline=deadline,
        issuer=locked.operator.address,
        policy_id=policy.pk,
        feed_id=feed_id,
        proposal_id=proposal_id,
        workflow_run_id=workflow_run_id,
    )
    if module_intent is not None:
        intent.module_intent = module_intent_json(module_intent)
        intent.digest = "0x" + module_intent.digest().hex()
        intent.signature = intent_sign_with_key(module_intent, key=locked.operator)
    else:
        domain, message = intent_domain(locked), intent_message(intent, policy_version=policy.version)
        signable = typed_data_signable(domain=domain, types=INTENT_TYPES, message=message)
        intent.digest = typed_data_hash(signable)
        intent.signature = key_manager().sign_typed_data(
            key=locked.operator, domain=domain, types=INTENT_TYPES, message=message
        )
    intent.save()
    logger.info("vault %s intent #%s signed: %s action(s)", locked.vault_id, intent.nonce, len(actions))
    return intent


def _request_action(intent: ExecutionIntent, index: int, after: RelayTransaction | None) -> RelayTransaction:
    vault = intent.vault
    if intent.module_intent:
        # The whole intent as one executeIntent, from the account key that only pays its gas.
        stored = intent.module_intent
        to = stored["module"]
        data = execute_intent_calldata(module_intent_of(stored, chain_id=vault.chain.chain_id), intent.signature)
    else:
        to, data = intent.actions[index]["address"], intent.actions[index]["calldata"]
    return relay_request(
        signer=vault.account,
        chain=vault.chain,
        to=to,
        data=data,
        idempotency_key=f"intent:{intent.id}:{index}",
        requested_by=("intent", str(intent.id)),
        correlation_id=intent.workflow_run.correlation_id if intent.workflow_run else None,
        not_after=intent.deadline,
        after=after,
        requester_run_id=intent.workflow_run_id,
    )


def intent_advance(*, intent: ExecutionIntent, now: datetime | None = None) -> str | None:
    """Moves the intent on. Its actions go to the relayer together, each `after` the one
    before: the relayer simulates each on the state the earlier ones leave (a deposit needs the
    funds its withdrawal frees), gives them consecutive nonces, and sends none before the one
    it follows (nor at all if that one fails). Returns the intent's final status (executed,
    failed) or None while actions are under way. Raises IntentExpired, marking it expired,
    when actions would be requested past the deadline: nothing is relayed past it."""
    relays = {
        r.position: r for r in intent_relays(intent_id=intent.pk).only("id", "phase", "error", "signer_id", "chain_id")
    }
    failed = [relays[i] for i in sorted(relays) if relays[i].phase in (TxPhase.FAILED, TxPhase.DEAD_LETTER)]
    if failed and any(r.phase in OPEN_PHASES for r in relays.values()):
        # An earlier action is still confirming: the intent fails once none of it can still move
        # funds, so the vault stays held until then (woken when that relay finishes).
        return None
    if failed:
        error = failed[0].error
        if intent.module_intent:  # the module's rule, in words, with the node's message
            error = f"{module_error(error)} [{error}]"
        ExecutionIntent.objects.filter(pk=intent.pk).update(status=IntentStatus.FAILED, error=error[:2000])
        return IntentStatus.FAILED
    done = [i for i, r in relays.items() if r.phase == TxPhase.COMPLETED]
    # Through a module the whole intent is one transaction; else one per action.
    transactions = 1 if intent.module_intent else len(intent.actions)
    if len(done) == transactions:
        ExecutionIntent.objects.filter(pk=intent.pk).update(status=IntentStatus.EXECUTED, executed_at=timezone.now())
        return IntentStatus.EXECUTED
    if len(relays) < transactions:  # not all asked for yet (an intent from before, or the first look)
        if (now or timezone.now()) > intent.deadline:
            ExecutionIntent.objects.filter(pk=intent.pk).update(status=IntentStatus.EXPIRED, error="deadline passed")
            raise IntentExpired(f"intent #{intent.nonce} expired at {intent.deadline.isoformat()}")
        previous: RelayTransaction | None = relays.get(len(relays) - 1)
        links = []
        for index in range(len(relays), transactions):
            previous = _request_action(intent, index, previous)
            links.append(IntentRelay(intent_id=intent.pk, relay=previous, position=index))
        # One statement for the links. A relay requested before it had its link (the key
        # returned the same relay) is linked now; one linked already is left as it is.
        IntentRelay.objects.bulk_create(links, ignore_conflicts=True)
        ExecutionIntent.objects.filter(pk=intent.pk, status=IntentStatus.SIGNED).update(status=IntentStatus.RELAYING)
    return None


def intents_close_for_run(*, run_id: Any, error: str) -> int:
    """When a run stops short (failed, blocked, dead-lettered), the intents it issued that can no
    longer move funds (none of their relays still open) stop counting as in flight: failed, or
    expired once past their deadline. The status the relay step wrote before raising is rolled
    back with its step, so it is written here, in the transaction that stops the run. An intent
    with a relay still open stays in flight: its transaction may yet confirm. Returns how many."""
    closed = 0
    for intent in ExecutionIntent.objects.filter(workflow_run_id=run_id, status__in=IN_FLIGHT):
        relays = list(intent_relays(intent_id=intent.pk).only("phase"))
        if any(r.phase in OPEN_PHASES for r in relays):
            continue
        expired = timezone.now() > intent.deadline and not relays
        status = IntentStatus.EXPIRED if expired else IntentStatus.FAILED
        closed += ExecutionIntent.objects.filter(pk=intent.pk, status__in=IN_FLIGHT).update(
            status=status, error=error[:2000]
        )
    return closed
