"""The relay workflow's last step: wait for the receipt and the chain's confirmation depth,
follow reorgs, and replace a transaction that does not mine with higher fees."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from hexbytes import HexBytes

from orchestrator.engine import StepContext, TerminalError, Wait
from orchestrator.failpoints import failpoint
from orchestrator.models import Phase
from relayer.models import Broadcast, BroadcastKind, RelayTransaction, TxPhase
from relayer.rpc import (
    TRANSPORT_ERRORS,
    Fees,
    RpcUnavailable,
    SendOutcome,
    TransactionNotFound,
    as_hex,
    bumped_fees,
    suggested_fees,
    web3_for,
)
from relayer.services.submission import record_broadcast, relay_load, send_stored, sign_for

logger = logging.getLogger("relayer")


def _hex(value: Any) -> str:
    return "0x" + HexBytes(value).hex().removeprefix("0x")


def relay_confirm(ctx: StepContext) -> dict[str, Any] | Wait:
    tx = relay_load(ctx)
    chain = tx.chain
    w3 = web3_for(chain.rpc_url)
    now = timezone.now()
    poll = Wait(phase=Phase.CONFIRMING, resume_at=now + timedelta(seconds=chain.poll_interval))
    try:
        found = _find_receipt(tx)
        if found is None:
            if tx.block_hash:
                _reorged_out(tx)
            elif tx.last_broadcast_at and (now - tx.last_broadcast_at).total_seconds() > chain.stuck_after:
                _replace(tx)
            return poll
        broadcast, receipt = found
        block_hash = _hex(receipt["blockHash"])
        if tx.block_hash != block_hash:
            # First sighting, or the reorg put it in another block: record where it is now.
            RelayTransaction.objects.filter(pk=tx.pk).update(
                block_number=receipt["blockNumber"],
                block_hash=block_hash,
                mined_hash=broadcast.tx_hash,
                receipt_status=receipt["status"],
                gas_used=receipt["gasUsed"],
                updated_at=now,
            )
        # A node only returns receipts of canonical transactions, so a receipt at depth 1 needs
        # no further check. Deeper, the head must be far enough and the block still ours.
        depth = 1
        if chain.confirmations > 1:
            depth = w3.eth.block_number - receipt["blockNumber"] + 1
            if depth < chain.confirmations:
                return poll
            if _hex(w3.eth.get_block(receipt["blockNumber"])["hash"]) != block_hash:
                return poll  # a reorg is under way at that height; look again next time
    except TRANSPORT_ERRORS as exc:
        raise RpcUnavailable(f"RPC unavailable while confirming: {exc.__class__.__name__}") from exc
    failpoint("relay.after_receipt")
    if receipt["status"] != 1:
        # Mined and reverted: the nonce is spent, so there is no gap to fill; the request failed.
        raise TerminalError(f"transaction {broadcast.tx_hash} reverted on chain in block {receipt['blockNumber']}")
    RelayTransaction.objects.filter(pk=tx.pk).update(phase=TxPhase.COMPLETED, confirmed_at=now, updated_at=now)
    logger.info(
        "relay %s confirmed: %s in block %s (depth %s)",
        tx.id,
        broadcast.tx_hash,
        receipt["blockNumber"],
        depth,
    )
    return {
        "txHash": broadcast.tx_hash,
        "blockNumber": receipt["blockNumber"],
        "blockHash": block_hash,
        "status": receipt["status"],
        "gasUsed": receipt["gasUsed"],
    }


def _find_receipt(tx: RelayTransaction) -> tuple[Broadcast, Any] | None:
    """The receipt of whichever version of the request mined (newest broadcast first)."""
    w3 = web3_for(tx.chain.rpc_url)
    for broadcast in tx.broadcasts.exclude(kind=BroadcastKind.FILLER).order_by("-id"):
        try:
            return broadcast, w3.eth.get_transaction_receipt(as_hex(broadcast.tx_hash))
        except TransactionNotFound:
            continue
    return None


def _reorged_out(tx: RelayTransaction) -> None:
    """The block that held it is gone: forget the receipt and make sure the node has it again."""
    logger.warning(
        "relay %s: block %s (%s) was reorged away; back to confirming", tx.id, tx.block_number, tx.block_hash
    )
    RelayTransaction.objects.filter(pk=tx.pk).update(
        block_number=None,
        block_hash="",
        mined_hash="",
        receipt_status=None,
        gas_used=None,
        phase=TxPhase.CONFIRMING,
        last_broadcast_at=timezone.now(),
        updated_at=timezone.now(),
    )
    latest = tx.broadcasts.exclude(kind=BroadcastKind.FILLER).order_by("-id").first()
    if latest is not None:
        send_stored(tx, latest)


def _replace(tx: RelayTransaction) -> None:
    """Not mined in time: the same nonce again with both fees up by at least 12.5%.

    The replacement is stored before it is sent, like the original. At the fee cap the stored
    transaction is re-sent as it is (a node may have dropped it). After the chain's max_bumps
    the relay fails; the monitor then fills the nonce with a zero-value self-transfer."""
    chain = tx.chain
    if tx.bumps >= chain.max_bumps:
        raise TerminalError(f"not mined after {tx.bumps} fee bumps")
    w3 = web3_for(chain.rpc_url)
    previous = Fees(int(tx.max_fee_per_gas or 0), int(tx.max_priority_fee_per_gas or 0))
    suggested = suggested_fees(
        w3=w3,
        chain_id=chain.chain_id,
        default_tip=int(chain.priority_fee_wei),
        cap=int(chain.max_fee_cap_wei),
    )
    fees = bumped_fees(previous=previous, suggested=suggested, cap=int(chain.max_fee_cap_wei))
    with transaction.atomic():
        locked = (
            RelayTransaction.objects.select_related("signer", "chain").select_for_update(of=("self",)).get(pk=tx.pk)
        )
        if fees is None:
            logger.warning("relay %s: at the fee cap, re-sending %s unchanged", tx.id, locked.tx_hash)
            broadcast = locked.broadcasts.exclude(kind=BroadcastKind.FILLER).order_by("-id").first()
        else:
            assert locked.nonce is not None
            signed = sign_for(locked, nonce=locked.nonce, fees=fees)
            broadcast = record_broadcast(locked, signed, nonce=locked.nonce, fees=fees, kind=BroadcastKind.REPLACEMENT)
            locked.bumps += 1
        locked.last_broadcast_at = timezone.now()
        locked.save(
            update_fields=[
                "tx_hash",
                "raw_tx",
                "max_fee_per_gas",
                "max_priority_fee_per_gas",
                "bumps",
                "last_broadcast_at",
                "updated_at",
            ]
        )
    if broadcast is None:
        return
    outcome = send_stored(locked, broadcast)
    logger.info("relay %s: replaced with %s (bump %s): %s", tx.id, broadcast.tx_hash, locked.bumps, outcome)
    if outcome == SendOutcome.INSUFFICIENT_FUNDS:
        logger.warning("relay %s: signer %s cannot pay for the fee bump", tx.id, tx.signer.address)
