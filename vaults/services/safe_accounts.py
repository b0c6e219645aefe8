"""A vault's Safe: its transactions as the owners sign them, the signatures checked against the
owners on chain, and the one `execTransaction` that carries them, sent by a key that only pays gas.

The Safe is the authority: it executes a transaction only with `threshold` signatures of current
owners over its hash at its nonce. What is checked here (the owner, the nonce, the count) is
checked first so that a refusal comes back as a clear error before anything is sent, never
instead of the Safe's own check (docs/flow-b.md#safe-vaults)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone
from eth_typing import HexStr

from orchestrator.infra.errors import Conflict, DomainError
from orchestrator.infra.signatures import MalformedSignature, signature_parse
from relayer.models import RelayTransaction, TxPhase
from relayer.rpc import TRANSPORT_ERRORS, web3_for
from relayer.services.requests import RelayConflict, on_relay_finished, relay_request
from vaults import safe as safe_lib
from vaults.models import SafeSignature, SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault

logger = logging.getLogger("vaults.safe")

OPEN = (SafeTxStatus.SIGNING, SafeTxStatus.SENDING)


class SafeUnreachable(DomainError):
    """The chain did not answer a read of the Safe: nothing was recorded; try again."""

    code = "chain_unavailable"
    http_status = 503


class InvalidSafeSignature(DomainError):
    """Not a signature at all (length, encoding, high s): the parser's reason."""

    code = "invalid_signature"
    http_status = 400


class NotASafeOwner(DomainError, PermissionError):
    """The signature recovers to an address that is not an owner of the Safe now."""

    code = "not_a_safe_owner"
    http_status = 403


class SafeTxVoid(Conflict):
    """The Safe has used the transaction's nonce for another transaction: it can never execute."""

    code = "safe_tx_void"


def vault_safe_state(vault: Vault) -> safe_lib.SafeState:
    """Owners, threshold and nonce of the vault's Safe, read now. Raises SafeUnreachable."""
    try:
        return safe_lib.safe_state(web3_for(vault.chain.rpc_url), vault.safe_address)
    except TRANSPORT_ERRORS as exc:
        raise SafeUnreachable(f"chain {vault.chain.chain_id} did not answer reading {vault.safe_address}") from exc


def safe_tx_of(row: SafeTransaction) -> safe_lib.SafeTx:
    return safe_lib.SafeTx.from_json(row.tx)


def _next_nonce(vault: Vault, state: safe_lib.SafeState) -> int:
    """The lowest nonce from the Safe's that no open transaction of the vault holds: the Safe
    executes nonces in order, so proposals queue behind each other, and a nonce freed by a
    proposal that expired is taken again (else everything queued behind it would wait for
    ever)."""
    taken = set(
        SafeTransaction.objects.filter(vault=vault, status__in=OPEN, nonce__gte=state.nonce).values_list(
            "nonce", flat=True
        )
    )
    nonce = state.nonce
    while nonce in taken:
        nonce += 1
    return nonce


def safe_tx_create(
    *,
    vault: Vault,
    purpose: str,
    calls: list[safe_lib.Call],
    summary: str,
    proposal_id: str = "",
    plan: dict[str, Any] | None = None,
    state: safe_lib.SafeState | None = None,
    multi_send: str | None = None,
) -> SafeTransaction:
    """A Safe transaction of `calls` (one MultiSend, so all of them happen or none) at the
    vault's next Safe nonce, and its rejection at the same nonce. Runs in the caller's
    transaction, under the vault's row lock, so two proposals never take the same nonce.
    `state` and `multi_send` (MultiSendCallOnly, checked to have code): read by a caller that
    reads them before its transaction, so no RPC waits inside it; else read here."""
    if state is None:
        state = vault_safe_state(vault)
    if multi_send is None:
        multi_send = safe_lib.safe_contracts(web3_for(vault.chain.rpc_url)).multi_send_call_only
    with transaction.atomic():
        Vault.objects.select_for_update().filter(pk=vault.pk).first()
        nonce = _next_nonce(vault, state)
        chain_id = vault.chain.chain_id
        main = safe_lib.multisend_tx(
            safe=vault.safe_address,
            chain_id=chain_id,
            multi_send=multi_send,
            calls=calls,
            nonce=nonce,
        )
        row = SafeTransaction.objects.create(
            vault=vault,
            purpose=purpose,
            nonce=nonce,
            tx=main.as_json(),
            safe_tx_hash="0x" + main.hash().hex(),
            proposal_id=proposal_id,
            summary=summary,
            plan=plan or {},
        )
        rejection = safe_lib.rejection_tx(safe=vault.safe_address, chain_id=chain_id, nonce=nonce)
        SafeTransaction.objects.create(
            vault=vault,
            purpose=SafeTxPurpose.REJECTION,
            nonce=nonce,
            tx=rejection.as_json(),
            safe_tx_hash="0x" + rejection.hash().hex(),
            rejects=row,
            proposal_id=proposal_id,
            summary=f"Reject Safe nonce {nonce} ({summary[:200]}): a transaction that does nothing",
        )
    logger.info("%s: Safe transaction at nonce %s for %s", vault.vault_id, nonce, proposal_id or purpose)
    return row


def signature_owner(row: SafeTransaction, signature: str) -> str:
    """The address `signature` recovers to over the transaction's hash. Raises
    InvalidSafeSignature."""
    try:
        return str(safe_lib.signature_owner(safe_tx_of(row), signature))
    except MalformedSignature as exc:
        raise InvalidSafeSignature(str(exc)) from exc


def safe_signature_add(
    *, row: SafeTransaction, signature: str, state: safe_lib.SafeState, submitted_by: Any = None, signer: Any = None
) -> SafeSignature:
    """Stores an owner's signature after checking that it recovers to a current owner, over
    this transaction's hash, while its nonce is still to come. The same owner's signature again
    returns the one stored. Raises InvalidSafeSignature, NotASafeOwner, SafeTxVoid."""
    if state.nonce > row.nonce:
        raise SafeTxVoid(
            f"the Safe is at nonce {state.nonce}: nonce {row.nonce} was used by another transaction, "
            "so this one can never execute"
        )
    owner = signature_owner(row, signature)
    if owner not in state.owners:
        raise NotASafeOwner(
            f"the signature recovers to {owner}, which is not an owner of the Safe {row.vault.safe_address}. "
            f"A signature of another proposal, nonce or chain recovers to some other address: sign "
            f"safeTxHash {row.safe_tx_hash} (nonce {row.nonce}) with an owner's wallet"
        )
    stored, _ = SafeSignature.objects.get_or_create(
        safe_tx=row,
        owner=owner,
        defaults={
            "signature": signature_parse(signature).hex(),
            "signer": signer,
            "submitted_by": submitted_by,
        },
    )
    return stored


def signatures_counting(row: SafeTransaction, state: safe_lib.SafeState) -> dict[str, str]:
    """The stored signatures of owners who are owners now, by owner."""
    owners = set(state.owners)
    return {s.owner: s.signature for s in row.signatures.all() if s.owner in owners}


def safe_exec_request(
    *, row: SafeTransaction, signatures: dict[str, str], requester_run_id: Any = None
) -> RelayTransaction:
    """Hands `execTransaction` with `signatures` to the relayer, from the vault's gas key.
    Exactly once: the idempotency key is the Safe transaction's hash, and a repeat with another
    set of signatures (more arrived in between) keeps the request made first."""
    vault = row.vault
    data = safe_lib.exec_transaction_calldata(safe_tx_of(row), signatures)
    key = f"safe-tx:{row.safe_tx_hash}"
    try:
        relay = relay_request(
            signer=vault.account,
            chain=vault.chain,
            to=vault.safe_address,
            data=data,
            idempotency_key=key,
            requested_by=("safe_tx", str(row.pk)),
            requester_run_id=requester_run_id,
        )
    except RelayConflict:
        relay = RelayTransaction.objects.get(idempotency_key=key)
    SafeTransaction.objects.filter(pk=row.pk, relay__isnull=True).update(relay=relay, status=SafeTxStatus.SENDING)
    return relay


def safe_tx_settle(row: SafeTransaction) -> str | None:
    """Where the sent transaction stands: executed, failed, or None while under way. Executed
    means the Safe logged ExecutionSuccess for this hash; the other transaction at its nonce
    (its rejection, or what it rejects) becomes void."""
    relay = RelayTransaction.objects.get(pk=str(row.relay_id))
    if relay.phase in (TxPhase.FAILED, TxPhase.DEAD_LETTER):
        reason = safe_lib.safe_revert_reason(relay.error or "")
        SafeTransaction.objects.filter(pk=row.pk).update(status=SafeTxStatus.FAILED, error=reason[:2000])
        return SafeTxStatus.FAILED
    if relay.phase != TxPhase.COMPLETED:
        return None
    receipt = web3_for(row.vault.chain.rpc_url).eth.get_transaction_receipt(HexStr(relay.mined_hash))
    if not safe_lib.safe_execution_succeeded(
        receipt, safe=row.vault.safe_address, safe_tx_hash=bytes.fromhex(row.safe_tx_hash[2:])
    ):
        SafeTransaction.objects.filter(pk=row.pk).update(
            status=SafeTxStatus.FAILED, error="the Safe logged ExecutionFailure: an inner call reverted"
        )
        return SafeTxStatus.FAILED
    with transaction.atomic():
        SafeTransaction.objects.filter(pk=row.pk).update(status=SafeTxStatus.EXECUTED, executed_at=timezone.now())
        SafeTransaction.objects.filter(vault=row.vault, nonce=row.nonce, status=SafeTxStatus.SIGNING).exclude(
            pk=row.pk
        ).update(status=SafeTxStatus.VOID, error=f"nonce {row.nonce} executed {row.safe_tx_hash}")
    return SafeTxStatus.EXECUTED


def safe_txs_void_below(*, vault: Vault, nonce: int) -> int:
    """Marks void the vault's transactions still collecting signatures at nonces the Safe has
    used. Returns how many."""
    return (
        SafeTransaction.objects.filter(vault=vault, status=SafeTxStatus.SIGNING, nonce__lt=nonce)
        .exclude(status=SafeTxStatus.EXECUTED)
        .update(status=SafeTxStatus.VOID, error=f"the Safe's nonce is {nonce}: this nonce was used")
    )


# Who wakes the workflow waiting on a Safe transaction's relay: registered by the app that
# runs it (approvals), so vaults names nothing of approvals.
_waiters: list[Callable[[SafeTransaction], None]] = []


def on_safe_tx_relayed(fn: Callable[[SafeTransaction], None]) -> Callable[[SafeTransaction], None]:
    _waiters.append(fn)
    return fn


@on_relay_finished("safe_tx")
def _relay_finished(tx: RelayTransaction) -> None:
    row = SafeTransaction.objects.filter(pk=tx.requested_by_id).first()
    if row is not None:
        for fn in _waiters:
            fn(row)
