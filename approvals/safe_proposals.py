"""Flow B on a Safe vault: a proposal is one Safe transaction, approving is signing it.

A proposal of a Safe vault gets, when it is made, a Safe transaction at the vault's next Safe
nonce: the rebalance's withdrawals, approvals and deposits as one MultiSend, so they happen
together or not at all, and a rejection at the same nonce that does nothing. An approver
approves by signing the first's EIP-712 SafeTx hash with their wallet and rejects by signing the
second; at `threshold` signatures of current owners the relayer sends `execTransaction` from a
key that only pays gas. Whichever of the two executes uses up the nonce, so a rejected proposal
can never execute later (docs/flow-b.md#safe-vaults)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction

from approvals.errors import AlreadyDecided, OwnProposal, ProposalClosed
from approvals.lifecycle import proposal_close, proposal_expire_if_due
from approvals.models import Approval, Decision, ProposalStatus, RebalanceProposal
from approvals.wallets import users_by_wallet
from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.services import workflow_start
from orchestrator.infra.errors import Conflict, DomainError
from relayer.rpc import web3_for
from vaults import onchain
from vaults import safe as safe_lib
from vaults.models import Protocol, SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault
from vaults.services.intents import plan_actions
from vaults.services.safe_accounts import (
    safe_signature_add,
    safe_tx_create,
    signature_owner,
    signatures_counting,
    vault_safe_state,
)

logger = logging.getLogger("approvals")

SAFE_EXECUTE_WORKFLOW = "safe.execute"


class NothingToSign(DomainError):
    """The Safe already holds the proposed allocation: there is no transaction to sign."""

    code = "invalid_proposal"
    http_status = 422


class SignatureRequired(Conflict):
    """A Safe vault's proposal is decided by signatures, not by a click that signs nothing."""

    code = "signature_required"


class NotYourWallet(DomainError, PermissionError):
    """The signature is an owner's, but not the wallet registered by the user who posted it
    from the admin."""

    code = "not_your_wallet"
    http_status = 403


def safe_owner_users(vault: Vault) -> tuple[list[Any], int, list[str]]:
    """The users whose registered wallets own the vault's Safe, the threshold, and the owners
    no user registered (they can still sign through the API)."""
    state = vault_safe_state(vault)
    users = users_by_wallet(state.owners)
    unregistered = [str(owner) for owner in state.owners if owner not in users]
    return sorted(users.values(), key=lambda u: u.get_username()), state.threshold, unregistered


def rebalance_calls(*, vault: Vault, allocation: dict[str, Decimal]) -> tuple[list[safe_lib.Call], dict[str, Any]]:
    """The calls that move the Safe's funds to `allocation` from its positions now, and the plan
    they were made from. A deposit is preceded by an approve of exactly its amount: the Safe
    keeps no standing allowance."""
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    held = onchain.positions(
        w3=web3_for(vault.chain.rpc_url), account=vault.safe_address, asset=vault.asset_address, protocols=protocols
    )
    plan = plan_actions(
        account=vault.safe_address,
        protocols=protocols,
        allocation=allocation,
        idle=held.idle,
        positions=held.by_protocol,
    )
    if not plan.actions:
        raise NothingToSign(f"the Safe of {vault.vault_id} already holds this allocation")
    calls: list[safe_lib.Call] = []
    for action in plan.actions:
        if action["kind"] == "deposit":
            approve = onchain.approve_calldata(action["address"], int(action["amount"]))
            calls.append(safe_lib.Call(to=vault.asset_address, value=0, data=approve))
        calls.append(safe_lib.Call(to=action["address"], value=0, data=action["calldata"]))
    record = {
        "idle": str(held.idle),
        "positions": {k: str(v) for k, v in held.by_protocol.items()},
        "actions": [{k: a[k] for k in ("kind", "protocol", "address", "amount")} for a in plan.actions],
        "valueMoved": str(plan.value_moved),
    }
    return calls, record


def _describe(actions: list[dict[str, str]]) -> str:
    return "; ".join(
        f"{a['kind']} {a['amount']} base units {'from' if a['kind'] == 'withdraw' else 'into'} {a['protocol']}"
        for a in actions
    )


@dataclass(frozen=True)
class SafePlan:
    """What a Safe proposal's transaction is made of, read from the chain before the
    transaction that records it (no RPC inside it): the calls, the plan, the Safe's state and
    its MultiSendCallOnly."""

    calls: list[safe_lib.Call]
    plan: dict[str, Any]
    state: safe_lib.SafeState
    multi_send: str


def proposal_safe_plan(*, vault: Vault, allocation: dict[str, Decimal]) -> SafePlan:
    """Reads what proposal_safe_attach needs. Raises NothingToSign, SafeUnreachable."""
    calls, plan = rebalance_calls(vault=vault, allocation=allocation)
    contracts = safe_lib.safe_contracts(web3_for(vault.chain.rpc_url))
    return SafePlan(calls, plan, vault_safe_state(vault), contracts.multi_send_call_only)


def proposal_safe_attach(proposal: RebalanceProposal, planned: SafePlan) -> SafeTransaction:
    """The proposal's Safe transaction and its rejection (in the caller's transaction)."""
    return safe_tx_create(
        vault=proposal.vault,
        purpose=SafeTxPurpose.REBALANCE,
        calls=planned.calls,
        summary=f"{proposal.proposal_id}: {_describe(planned.plan['actions'])}",
        proposal_id=proposal.proposal_id,
        plan=planned.plan,
        state=planned.state,
        multi_send=planned.multi_send,
    )


def proposal_safe_txs(proposal: RebalanceProposal) -> tuple[SafeTransaction | None, SafeTransaction | None]:
    """The proposal's Safe transaction and its rejection, or (None, None) off a Safe vault."""
    main = (
        SafeTransaction.objects.filter(proposal_id=proposal.proposal_id, purpose=SafeTxPurpose.REBALANCE)
        .select_related("vault__chain", "rejection")
        .first()
    )
    if main is None:
        return None, None
    return main, getattr(main, "rejection", None)


def proposal_sign(
    *,
    proposal: RebalanceProposal,
    signature: str,
    decision: str,
    submitted_by: Any = None,
    from_wallet_of: Any = None,
) -> RebalanceProposal:
    """Records an owner's signature of the proposal's Safe transaction (approve) or of its
    rejection (reject), under the proposal's row lock, and moves the proposal on at
    `threshold` signatures of current owners. `from_wallet_of`: the admin's user, whose
    registered wallet the signature must be from. Raises the Safe checks' errors
    (InvalidSafeSignature, NotASafeOwner, SafeTxVoid), NotYourWallet, OwnProposal,
    AlreadyDecided, ProposalClosed."""
    # The Safe's owners, threshold and nonce, read before the row lock: no RPC waits inside the
    # transaction. The Safe checks them again when it executes.
    state = vault_safe_state(proposal.vault)
    _close_if_stale(proposal, state)
    with transaction.atomic():
        locked = (
            RebalanceProposal.objects.select_for_update(of=("self",))
            .select_related("vault__chain", "vault__account", "proposer")
            .get(pk=proposal.pk)
        )
        main, rejection = proposal_safe_txs(locked)
        if main is None or rejection is None:
            raise SignatureRequired(f"{locked.proposal_id} is not a Safe transaction: approve or reject it")
        if locked.status != ProposalStatus.PENDING:
            raise ProposalClosed(f"{locked.proposal_id} is {locked.status}")
        row = main if decision == Decision.APPROVE else rejection
        owner = signature_owner(row, signature)
        signer = users_by_wallet([owner]).get(owner)
        if from_wallet_of is not None and (signer is None or signer.pk != from_wallet_of.pk):
            raise NotYourWallet(f"this signature is from {owner}, not from your registered wallet")
        if signer is not None and locked.proposer_id == signer.pk:
            raise OwnProposal("a proposer cannot decide on their own proposal")
        other = rejection if row is main else main
        if other.signatures.filter(owner=owner).exists():
            raise AlreadyDecided(f"{owner} already signed the other side of {locked.proposal_id}")
        if state.nonce > row.nonce:  # closed by _close_if_stale unless the Safe moved just now
            raise ProposalClosed(f"{locked.proposal_id} can no longer execute: its Safe nonce was used")
        safe_signature_add(row=row, signature=signature, state=state, submitted_by=submitted_by, signer=signer)
        if signer is not None:
            Approval.objects.get_or_create(proposal=locked, approver=signer, defaults={"decision": decision})
        counted = len(signatures_counting(row, state))
        if counted >= state.threshold:
            status = ProposalStatus.APPROVED if row is main else ProposalStatus.REJECTED
            proposal_close(
                locked, status, f"{counted} of {len(state.owners)} owners signed (threshold {state.threshold})"
            )
            safe_execution_start(row=row, started_by=submitted_by)
    logger.info("%s signs %s of %s (%s)", owner, decision, locked.proposal_id, locked.status)
    return locked


def _close_if_stale(proposal: RebalanceProposal, state: safe_lib.SafeState) -> None:
    """Closes, in a transaction of its own, a proposal a signature can no longer move: one past
    its expiry, or one whose Safe nonce another transaction used. In the signing transaction
    the refusal that follows would roll the closing back with it."""
    with transaction.atomic():
        locked = RebalanceProposal.objects.select_for_update(of=("self",)).get(pk=proposal.pk)
        proposal_expire_if_due(locked)
        main, _ = proposal_safe_txs(locked)
        if locked.status == ProposalStatus.PENDING and main is not None and state.nonce > main.nonce:
            _void(locked, f"the Safe is at nonce {state.nonce}: nonce {main.nonce} was used by another transaction")


def _void(proposal: RebalanceProposal, why: str) -> None:
    SafeTransaction.objects.filter(proposal_id=proposal.proposal_id, status=SafeTxStatus.SIGNING).update(
        status=SafeTxStatus.VOID, error=why
    )
    proposal.status = ProposalStatus.CANCELLED
    proposal.execution_error = why
    proposal.save(update_fields=["status", "execution_error"])


def safe_execution_start(*, row: SafeTransaction, started_by: Any = None) -> WorkflowRun:
    """Starts (once per Safe transaction) the workflow that checks it again and sends it."""
    proposal = RebalanceProposal.objects.filter(proposal_id=row.proposal_id).values_list("pk", flat=True).first()
    run, _ = workflow_start(
        kind=SAFE_EXECUTE_WORKFLOW,
        # "proposal" is the proposal's pk, as Flow B's runs have it (the proposal page finds its
        # run by it); None for an owner change.
        input={"safeTx": str(row.pk), "proposal": proposal if row.proposal_id else None},
        idempotency_key=f"safe-exec:{row.pk}",
        owner=started_by,
    )
    return run


def signing_payload(row: SafeTransaction) -> dict[str, Any]:
    """What a wallet signs, and what it will do, for the API and the admin's signing page."""
    tx = safe_lib.SafeTx.from_json(row.tx)
    # Decoded only when it is a DELEGATECALL to the chain's MultiSendCallOnly: anything else is
    # shown as the one call it is.
    known = safe_lib.canonical_addresses(tx.chain_id) or safe_lib.development_addresses()
    calls = safe_lib.calls_of(tx, multi_send=known.multi_send_call_only)
    return {
        "safeTxHash": row.safe_tx_hash,
        "nonce": row.nonce,
        "typedData": tx.typed_data(),
        "calls": [{"to": c.to, "value": str(c.value), "data": c.data} for c in calls],
        "status": row.status,
    }
