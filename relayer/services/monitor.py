"""What beat does for the relayer beyond each relay's own workflow: fill nonces that failed
requests left behind, and report signers' balances."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from orchestrator.infra.observability import correlation
from relayer.models import Broadcast, BroadcastKind, Chain, RelayTransaction, SigningKey, TxPhase
from relayer.rpc import (
    TRANSPORT_ERRORS,
    Fees,
    TransactionNotFound,
    as_address,
    as_hex,
    bumped_fees,
    suggested_fees,
    web3_for,
)
from relayer.services.submission import record_broadcast, send_stored, sign_for

logger = logging.getLogger("relayer")

SELF_TRANSFER_GAS = 21000


@dataclass(frozen=True)
class MonitorResult:
    filled: int
    resent: int


def nonce_gaps_fill(*, limit: int = 100) -> MonitorResult:
    """A failed request that holds a nonce nobody will ever mine blocks every later nonce of its
    signer. Each such nonce gets a zero-value self-transfer, priced above anything sent for it
    before so it also replaces a pending original. The filler is stored (claimed) in one
    transaction and sent after it, so two monitors never sign two fillers for one nonce."""
    filled = resent = 0
    candidates = (
        RelayTransaction.objects.filter(phase=TxPhase.FAILED, nonce__isnull=False, mined_hash="", chain__enabled=True)
        .exclude(error="")  # always true of a failed request; it lets relay_nonce_gap_idx serve this
        .select_related("signer", "chain")[:limit]
    )
    for tx in candidates:
        # Logged under the relay's own correlation id: the filler belongs to that execution.
        with correlation(tx.correlation_id or "-"):
            try:
                if _nonce_spent(tx):
                    continue
                broadcast = _claim_filler(tx)
                if broadcast is None:
                    continue
                send_stored(tx, broadcast)
            except TRANSPORT_ERRORS:
                logger.warning("relayer monitor: chain %s unreachable; will retry", tx.chain_id)
                continue
            if broadcast.sent_at is None:
                filled += 1
                logger.info("relay %s: nonce %s filled by %s", tx.id, tx.nonce, broadcast.tx_hash)
            else:
                resent += 1
    return MonitorResult(filled=filled, resent=resent)


def _nonce_spent(tx: RelayTransaction) -> bool:
    assert tx.nonce is not None
    mined = web3_for(tx.chain.rpc_url).eth.get_transaction_count(as_address(tx.signer.address), "latest")
    if mined <= tx.nonce:
        return False
    # Spent: by the filler, by a late original, or by a transaction sent outside the relayer.
    w3 = web3_for(tx.chain.rpc_url)
    which = "(spent outside the relayer)"
    for tx_hash in tx.broadcasts.order_by("-id").values_list("tx_hash", flat=True):
        try:
            w3.eth.get_transaction_receipt(as_hex(tx_hash))
        except TransactionNotFound:
            continue
        which = tx_hash
        break
    RelayTransaction.objects.filter(pk=tx.pk).update(mined_hash=which, updated_at=timezone.now())
    return True


def _claim_filler(tx: RelayTransaction) -> Broadcast | None:
    """The filler to send: a new one, or the stored one again once it looks stuck."""
    with transaction.atomic():
        locked = (
            RelayTransaction.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("signer", "chain")
            .filter(pk=tx.pk)
            .first()
        )
        if locked is None:
            return None  # another monitor is on it
        existing = locked.broadcasts.filter(kind=BroadcastKind.FILLER).order_by("-id").first()
        if existing is not None:
            stale = (
                existing.sent_at is None or (timezone.now() - existing.sent_at).total_seconds() > tx.chain.stuck_after
            )
            return existing if stale else None
        chain = locked.chain
        previous = Fees(int(locked.max_fee_per_gas or 0), int(locked.max_priority_fee_per_gas or 0))
        cap = int(chain.max_fee_cap_wei)
        suggested = suggested_fees(
            w3=web3_for(chain.rpc_url),
            chain_id=chain.chain_id,
            default_tip=int(chain.priority_fee_wei),
            cap=cap,
        )
        fees = bumped_fees(previous=previous, suggested=suggested, cap=cap) or Fees(
            cap, min(cap, previous.max_priority_fee_per_gas)
        )
        assert locked.nonce is not None
        signed = sign_for(
            locked,
            nonce=locked.nonce,
            fees=fees,
            to=locked.signer.address,
            value=0,
            data="0x",
            gas=SELF_TRANSFER_GAS,
        )
        return record_broadcast(locked, signed, nonce=locked.nonce, fees=fees, kind=BroadcastKind.FILLER)


@dataclass(frozen=True)
class SignerState:
    address: str
    purpose: str
    chain_id: int
    balance_wei: int | None
    next_nonce: int | None
    low: bool


def signer_states(*, low_balance_wei: int) -> list[SignerState]:
    """Balances and nonces of relayer keys on every enabled chain (None where the RPC fails)."""
    states = []
    for chain in Chain.objects.filter(enabled=True):
        w3 = web3_for(chain.rpc_url)
        cursors = {c.signer_id: c.next_nonce for c in chain.cursors.all()}
        for key in SigningKey.objects.filter(purpose="relayer"):
            try:
                balance: int | None = int(w3.eth.get_balance(as_address(key.address)))
            except TRANSPORT_ERRORS:
                balance = None
            states.append(
                SignerState(
                    key.address,
                    key.purpose,
                    chain.chain_id,
                    balance,
                    cursors.get(key.pk),
                    balance is not None and balance < low_balance_wei,
                )
            )
    return states
