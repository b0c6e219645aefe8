"""The relay batch's last step: wait for the receipt and the chain's confirmation depth,
follow reorgs, and replace a transaction that does not mine with higher fees."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from orchestrator.engine import StepContext, TerminalError, Wait
from orchestrator.engine.models import Phase
from orchestrator.infra.bulk import rows_update
from orchestrator.infra.failpoints import failpoint
from relayer.models import Broadcast, BroadcastKind, Chain, RelayTransaction, TxPhase
from relayer.rpc import (
    TRANSPORT_ERRORS,
    Fees,
    RpcUnavailable,
    SendOutcome,
    bumped_fees,
    rpc_batch,
    suggested_fees,
    web3_for,
)
from relayer.services.batches import OPEN_PHASES, batch_open, relay_fail, relays_finish
from relayer.services.requesters import requester_runs_note
from relayer.services.submission import record_broadcast, send_stored, sign_for

logger = logging.getLogger("relayer")

RECEIPT_FIELDS = ["block_number", "block_hash", "mined_hash", "receipt_status", "gas_used"]


def relay_confirm(ctx: StepContext) -> dict[str, int] | Wait:
    """Looks up the receipts of every broadcast of the batch's open requests that may have one
    (_worth_a_look) in one JSON-RPC batch (and, for a depth above 1, the head and the blocks
    that hold them). Requests confirmed
    deep enough complete (or fail, if they reverted on chain); the rest are looked at again
    after the chain's poll interval, replaced when stuck, and re-sent when a reorg dropped them."""
    look = _worth_a_look(ctx.run_id)
    if look is None:
        return {"confirmed": 0}
    # Without the signed bytes, which nothing here reads (a re-send or a bump loads its row again).
    txs = list(batch_open(ctx.run_id).filter(pk__in=look.ids).defer("raw_tx", "data")) if look.ids else []
    now = timezone.now()
    if not txs:
        return Wait(phase=Phase.CONFIRMING, resume_at=now + timedelta(seconds=look.poll_interval))
    chain = txs[0].chain
    sent = _hashes_sent(txs)
    hashes = [(tx, tx_hash) for tx in txs for tx_hash in sent.get(tx.pk, [])]
    calls = [("eth_getTransactionReceipt", [tx_hash]) for _, tx_hash in hashes]
    if chain.confirmations > 1:
        calls.append(("eth_blockNumber", []))
    answers = rpc_batch(chain.rpc_url, calls)
    if any(a.error is not None for a in answers):
        raise RpcUnavailable(f"RPC refused a receipt lookup: {next(a.message for a in answers if a.error)}")
    head = int(answers[-1].result, 16) if chain.confirmations > 1 else None
    receipts: dict[uuid.UUID, tuple[str, dict[str, Any]]] = {}  # a receipt: the node's JSON
    for (tx, tx_hash), answer in zip(hashes, answers, strict=False):
        if answer.result is not None and tx.pk not in receipts:
            receipts[tx.pk] = (tx_hash, answer.result)  # the newest broadcast that mined
    deep = _canonical_blocks(chain, head, [int(r["blockNumber"], 16) for _, r in receipts.values()])
    seen, done, reverted, waiting = [], [], [], look.unmined
    for tx in txs:
        found = receipts.get(tx.pk)
        if found is None:
            waiting += 1
            _not_mined(tx, now)
            continue
        mined_hash, receipt = found
        block_number, block_hash = int(receipt["blockNumber"], 16), receipt["blockHash"]
        if tx.block_hash != block_hash:
            # First sighting, or the reorg put it in another block: record where it is now.
            tx.block_number, tx.block_hash, tx.mined_hash = block_number, block_hash, mined_hash
            tx.receipt_status, tx.gas_used = int(receipt["status"], 16), int(receipt["gasUsed"], 16)
            tx.updated_at = now
            seen.append(tx)
        # A node only returns receipts of canonical transactions, so a receipt at depth 1 needs
        # no further check. Deeper, the head must be far enough and the block still ours.
        if head is not None and deep.get(block_number) != block_hash:
            waiting += 1
            continue
        tx.confirmed_at = now
        if tx.receipt_status == 1:
            done.append(tx)
        else:
            # Mined and reverted: the nonce is spent, so there is no gap to fill; the request failed.
            tx.error = f"transaction {mined_hash} reverted on chain in block {block_number}"
            reverted.append(tx)
    # A receipt seen at the depth needed (always, at depth 1) is written with the final phase,
    # in one statement; one still short of it is written now, and finishes on a later look.
    finished = {tx.pk for tx in done + reverted}
    short_of_depth = [tx for tx in seen if tx.pk not in finished]
    rows_update(RelayTransaction, short_of_depth, [*RECEIPT_FIELDS, "updated_at"])
    requester_runs_note(short_of_depth)
    failpoint("relay.after_receipt")
    fields = ["confirmed_at", *RECEIPT_FIELDS]
    relays_finish(done, phase=TxPhase.COMPLETED, fields=fields, note_requesters=True)
    relays_finish(reverted, phase=TxPhase.FAILED, fields=fields, note_requesters=True)
    if waiting:
        return Wait(phase=Phase.CONFIRMING, resume_at=now + timedelta(seconds=chain.poll_interval))
    return {"confirmed": len(done), "reverted": len(reverted)}


def _hashes_sent(txs: list[RelayTransaction]) -> dict[uuid.UUID, list[str]]:
    """Every hash broadcast for each request (originals and replacements, not nonce fillers),
    newest first: as plain strings, not Broadcast objects (measured: 30 requests loaded with
    their broadcasts as objects took 4-5 ms of CPU, without them 1.5 ms)."""
    sent: dict[uuid.UUID, list[str]] = {}
    # Sorted here: ORDER BY id made PostgreSQL scan the whole table in id order (in parallel)
    # rather than look the requests up by transaction_id.
    rows = sorted(
        Broadcast.objects.filter(transaction_id__in=[tx.pk for tx in txs])
        .exclude(kind=BroadcastKind.FILLER)
        .order_by()
        .values_list("id", "transaction_id", "tx_hash"),
        reverse=True,
    )
    for _, tx_id, tx_hash in rows:
        sent.setdefault(tx_id, []).append(tx_hash)
    return sent


@dataclass(frozen=True)
class _Look:
    ids: list[uuid.UUID]  # the open requests worth looking up
    unmined: int  # the others: not mined yet, by their signer's nonce on chain
    poll_interval: float


def _worth_a_look(run_id: uuid.UUID) -> _Look | None:
    """Which of the batch's open, signed requests may have a receipt, or need a bump or a
    re-send: those whose nonce the chain has passed (by each signer's transaction count), those
    seen before (a depth above 1, or a reorg), and those broadcast long enough ago to be stuck.
    The others cannot have mined and are left as they are, so a batch polled while its node
    mines it (anvil under load: a few transactions a poll) loads and looks up each request
    about once, not on every poll. None when no request is open."""
    rows = list(
        RelayTransaction.objects.filter(workflow_run_id=run_id, phase__in=OPEN_PHASES, nonce__isnull=False).values_list(
            "id",
            "signer__address",
            "nonce",
            "block_hash",
            "last_broadcast_at",
            "chain__rpc_url",
            "chain__stuck_after",
            "chain__poll_interval",
        )
    )
    if not rows:
        return None
    rpc_url, stuck_after, poll_interval = rows[0][5], rows[0][6], rows[0][7]
    signers = sorted({row[1] for row in rows})
    answers = rpc_batch(rpc_url, [("eth_getTransactionCount", [address, "latest"]) for address in signers])
    if any(a.error is not None for a in answers):
        raise RpcUnavailable(f"RPC refused a nonce lookup: {next(a.message for a in answers if a.error)}")
    passed = {address: int(a.result, 16) for address, a in zip(signers, answers, strict=True)}
    now = timezone.now()
    ids = [
        pk
        for pk, address, nonce, block_hash, broadcast_at, *_ in rows
        if nonce is None
        or nonce < passed[address]
        or block_hash
        or broadcast_at is None
        or (now - broadcast_at).total_seconds() > stuck_after
    ]
    return _Look(ids=ids, unmined=len(rows) - len(ids), poll_interval=poll_interval)


def _canonical_blocks(chain: Chain, head: int | None, numbers: list[int]) -> dict[int, str]:
    """The canonical hash of every block among `numbers` that is at the chain's confirmation
    depth below `head` (none when the depth is 1: receipts are canonical already)."""
    if head is None:
        return {}
    wanted = sorted({n for n in numbers if head - n + 1 >= chain.confirmations})
    answers = rpc_batch(chain.rpc_url, [("eth_getBlockByNumber", [hex(n), False]) for n in wanted])
    return {n: a.result["hash"] for n, a in zip(wanted, answers, strict=True) if a.result}


def _not_mined(tx: RelayTransaction, now: datetime) -> None:
    """No receipt: dropped by a reorg (send it again), stuck (bump its fees), or just pending."""
    try:
        if tx.block_hash:
            _reorged_out(tx)
        elif tx.last_broadcast_at and (now - tx.last_broadcast_at).total_seconds() > tx.chain.stuck_after:
            _replace(tx)
    except TerminalError as exc:
        relay_fail(tx, str(exc))
    except TRANSPORT_ERRORS as exc:
        raise RpcUnavailable(f"RPC unavailable while confirming: {exc.__class__.__name__}") from exc


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
    requester_runs_note([tx])
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
        requester_runs_note([locked])
    if broadcast is None:
        return
    outcome = send_stored(locked, broadcast)
    logger.info("relay %s: replaced with %s (bump %s): %s", tx.id, broadcast.tx_hash, locked.bumps, outcome)
    if outcome == SendOutcome.INSUFFICIENT_FUNDS:
        logger.warning("relay %s: signer %s cannot pay for the fee bump", tx.id, tx.signer.address)
