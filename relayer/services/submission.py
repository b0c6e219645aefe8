"""The relay workflow's first three steps: simulate, sign (with its nonce), broadcast.

The order is the exactly-once argument: the nonce is taken and the signed bytes are stored in
one transaction (`relay_sign`), and only stored bytes are ever broadcast. A worker killed
before that commit leaves no nonce taken; killed after it, the retry re-sends the very same
bytes, which the node answers with "already known" or "nonce too low". There is never a
second, different transaction for one request."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone
from eth_account.datastructures import SignedTransaction

from orchestrator.engine import RetryableError, StepContext, TerminalError
from orchestrator.failpoints import failpoint
from relayer.keys import key_manager
from relayer.models import Broadcast, BroadcastKind, RelayTransaction, TxPhase
from relayer.rpc import (
    TRANSPORT_ERRORS,
    ContractLogicError,
    Fees,
    RpcUnavailable,
    SendOutcome,
    TransactionNotFound,
    Web3RPCError,
    as_hex,
    classify_send_error,
    rpc_message,
    suggested_fees,
    web3_for,
)
from relayer.services.nonces import nonce_allocate, nonce_cursor_ensure, nonce_resync

logger = logging.getLogger("relayer")

GAS_HEADROOM = 1.2  # estimates are exact for the state they ran on; the state moves


def relay_load(ctx: StepContext, *, lock: bool = False) -> RelayTransaction:
    rows = RelayTransaction.objects.select_related("signer", "chain")
    if lock:
        rows = rows.select_for_update(of=("self",))
    return rows.get(pk=uuid.UUID(ctx.input["tx"]))


def refuse_if_late(tx: RelayTransaction) -> None:
    if tx.not_after is not None and timezone.now() > tx.not_after:
        raise TerminalError(f"deadline {tx.not_after.isoformat()} passed; not relayed")


def relay_prepare(ctx: StepContext) -> dict[str, Any]:
    """Simulates the call and prices it. A revert fails the relay here, before any nonce is
    taken, so a reverting request leaves no gap behind."""
    tx = relay_load(ctx)
    if tx.nonce is not None:
        return {"gasLimit": tx.gas_limit, "note": "already signed"}
    refuse_if_late(tx)
    chain, signer = tx.chain, tx.signer
    w3 = web3_for(chain.rpc_url)
    call = {"from": signer.address, "to": tx.to, "value": int(tx.value), "data": tx.data}
    try:
        if tx.data not in ("", "0x"):
            w3.eth.call(call)  # type: ignore[arg-type]
        gas = w3.eth.estimate_gas(call)  # type: ignore[arg-type]
        nonce_cursor_ensure(signer=signer, chain=chain)
        fees = suggested_fees(
            w3=w3,
            chain_id=chain.chain_id,
            default_tip=int(chain.priority_fee_wei),
            cap=int(chain.max_fee_cap_wei),
        )
    except ContractLogicError as exc:
        raise TerminalError(f"simulation reverted: {exc.message or exc}") from exc
    except TRANSPORT_ERRORS as exc:
        raise RpcUnavailable(f"RPC unavailable while simulating: {exc.__class__.__name__}") from exc
    except Web3RPCError as exc:
        message = rpc_message(exc)
        if "insufficient funds" in message.lower():
            raise RetryableError(f"signer {signer.address} has insufficient funds: {message}") from exc
        raise TerminalError(f"simulation failed: {message}") from exc
    gas_limit = int(gas * GAS_HEADROOM)
    RelayTransaction.objects.filter(pk=tx.pk).update(
        gas_limit=gas_limit,
        max_fee_per_gas=fees.max_fee_per_gas,
        max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
        phase=TxPhase.SUBMITTING,
        updated_at=timezone.now(),
    )
    return {
        "gasLimit": gas_limit,
        "maxFeePerGas": str(fees.max_fee_per_gas),
        "maxPriorityFeePerGas": str(fees.max_priority_fee_per_gas),
    }


def sign_for(
    tx: RelayTransaction,
    *,
    nonce: int,
    fees: Fees,
    to: str | None = None,
    value: int | None = None,
    data: str | None = None,
    gas: int | None = None,
) -> SignedTransaction:
    return key_manager().sign_transaction(
        key=tx.signer,
        tx={
            "type": 2,
            "chainId": tx.chain.chain_id,
            "nonce": nonce,
            "to": to or tx.to,
            "value": int(tx.value) if value is None else value,
            "data": tx.data if data is None else data,
            "gas": gas or int(tx.gas_limit or 21000),
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        },
    )


def relay_sign(ctx: StepContext) -> dict[str, Any]:
    """Takes the nonce, signs, and stores the signed bytes: one transaction (an atomic step)."""
    tx = relay_load(ctx, lock=True)
    if tx.nonce is not None:
        return {"nonce": tx.nonce, "txHash": tx.tx_hash}
    refuse_if_late(tx)  # the last gate: nothing is signed past the deadline
    fees = Fees(int(tx.max_fee_per_gas or 0), int(tx.max_priority_fee_per_gas or 0))
    nonce = nonce_allocate(signer=tx.signer, chain=tx.chain)
    signed = sign_for(tx, nonce=nonce, fees=fees)
    record_broadcast(tx, signed, nonce=nonce, fees=fees, kind=BroadcastKind.ORIGINAL)
    tx.nonce = nonce
    tx.save(
        update_fields=[
            "nonce",
            "tx_hash",
            "raw_tx",
            "max_fee_per_gas",
            "max_priority_fee_per_gas",
            "updated_at",
        ]
    )
    failpoint("relay.sign_before_commit")
    logger.info("relay %s signed nonce %s as %s", tx.id, nonce, tx.tx_hash)
    return {"nonce": nonce, "txHash": tx.tx_hash}


def record_broadcast(
    tx: RelayTransaction, signed: SignedTransaction, *, nonce: int, fees: Fees, kind: str
) -> Broadcast:
    tx_hash = "0x" + signed.hash.hex().removeprefix("0x")
    raw = "0x" + signed.raw_transaction.hex().removeprefix("0x")
    if kind != BroadcastKind.FILLER:
        tx.tx_hash, tx.raw_tx = tx_hash, raw
        tx.max_fee_per_gas, tx.max_priority_fee_per_gas = fees.max_fee_per_gas, fees.max_priority_fee_per_gas
    return Broadcast.objects.create(
        transaction=tx,
        kind=kind,
        tx_hash=tx_hash,
        raw_tx=raw,
        nonce=nonce,
        max_fee_per_gas=fees.max_fee_per_gas,
        max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
    )


def send_stored(tx: RelayTransaction, broadcast: Broadcast) -> str:
    """Sends stored bytes and says what the node made of them (a SendOutcome). Raises
    RpcUnavailable when the node cannot be reached."""
    w3 = web3_for(tx.chain.rpc_url)
    try:
        w3.eth.send_raw_transaction(as_hex(broadcast.raw_tx))
        outcome = SendOutcome.ACCEPTED
    except Exception as exc:  # every failure is classified just below
        outcome = classify_send_error(exc)
    Broadcast.objects.filter(pk=broadcast.pk).update(
        sent_at=timezone.now(), send_error="" if outcome == SendOutcome.ACCEPTED else outcome
    )
    return outcome


def known_on_chain(tx: RelayTransaction) -> bool:
    """Whether the node knows any of the hashes we broadcast for this request."""
    w3 = web3_for(tx.chain.rpc_url)
    for tx_hash in tx.broadcasts.values_list("tx_hash", flat=True):
        try:
            w3.eth.get_transaction(as_hex(tx_hash))
            return True
        except TransactionNotFound:
            continue
        except TRANSPORT_ERRORS as exc:
            raise RpcUnavailable("RPC unavailable while looking up a transaction") from exc
    return False


def relay_broadcast(ctx: StepContext) -> dict[str, Any]:
    tx = relay_load(ctx)
    latest = tx.broadcasts.exclude(kind=BroadcastKind.FILLER).order_by("-id").first()
    if latest is None:
        raise TerminalError("nothing was signed for this relay")
    failpoint("relay.before_broadcast")
    outcome = send_stored(tx, latest)
    failpoint("relay.after_broadcast")
    if outcome == SendOutcome.INSUFFICIENT_FUNDS:
        raise RetryableError(f"signer {tx.signer.address} has insufficient funds for gas * price + value")
    if outcome == SendOutcome.NONCE_USED and not known_on_chain(tx):
        # Our nonce went to a transaction we never signed: the key is used outside the relayer.
        nonce_resync(signer=tx.signer, chain=tx.chain)
        raise TerminalError(
            f"nonce {tx.nonce} of {tx.signer.address} was used by a transaction the relayer did not send; "
            "the nonce cursor was moved past it"
        )
    # ACCEPTED and ALREADY_KNOWN are what we want; NONCE_USED by our own hash means it mined
    # already; UNDERPRICED means a transaction with our nonce is pending: confirmation bumps
    # the fee if it does not mine.
    with transaction.atomic():
        RelayTransaction.objects.filter(pk=tx.pk).update(
            phase=TxPhase.CONFIRMING, last_broadcast_at=timezone.now(), updated_at=timezone.now()
        )
    logger.info("relay %s broadcast %s: %s", tx.id, latest.tx_hash, outcome)
    return {"txHash": latest.tx_hash, "outcome": outcome}
