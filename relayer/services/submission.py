"""The relay batch's first three steps: simulate, sign (with nonces), broadcast.

The order is the exactly-once argument: the nonces are taken and the signed bytes are stored
in one transaction (`relay_sign`), and only stored bytes are ever broadcast. A worker killed
before that commit leaves no nonce taken; killed after it, the retry re-sends the very same
bytes, which the node answers with "already known" or "nonce too low". There is never a
second, different transaction for one request."""

from __future__ import annotations

import logging

from django.utils import timezone
from eth_account.datastructures import SignedTransaction
from eth_account.types import TransactionDictType

from orchestrator.engine import RetryableError, StepContext
from orchestrator.infra.bulk import rows_update
from orchestrator.infra.failpoints import failpoint
from orchestrator.infra.observability import correlation
from relayer.keys import key_manager
from relayer.models import Broadcast, BroadcastKind, RelayTransaction, TxPhase
from relayer.rpc import (
    TRANSPORT_ERRORS,
    Fees,
    RpcResult,
    RpcUnavailable,
    SendOutcome,
    TransactionNotFound,
    as_hex,
    classify_send_error,
    classify_send_message,
    rpc_batch,
    suggested_fees,
    web3_for,
)
from relayer.services.batches import batch_open, followers_of, relay_batch_split, relay_fail, relays_finish
from relayer.services.lanes import lane_kick
from relayer.services.nonces import nonce_cursor_ensure, nonce_resync, nonces_allocate
from relayer.services.requesters import requester_runs_note
from relayer.services.sending import sending_lock, unsent_before
from relayer.services.simulation import batch_simulate

logger = logging.getLogger("relayer")

GAS_HEADROOM = 1.2  # estimates are exact for the state they ran on; the state moves


def refuse_if_late(tx: RelayTransaction) -> str:
    """Why the request may no longer be signed (its deadline passed), or ""."""
    if tx.not_after is not None and timezone.now() > tx.not_after:
        return f"deadline {tx.not_after.isoformat()} passed; not relayed"
    return ""


def _simulation_failure(result: RpcResult) -> str | None:
    """What a failed eth_estimateGas means for its request: None when it is the signer's
    balance (it waits and retries), else the request's terminal error."""
    message = result.message
    if "insufficient funds" in message.lower():
        return None
    if "revert" in message.lower():
        # The revert data too, so whoever asked can name a custom error (a module's rule).
        data = (result.error or {}).get("data")
        if isinstance(data, str) and data.startswith("0x") and data not in message:
            message = f"{message} (revert data {data})"
        return f"simulation reverted: {message}"
    return f"simulation failed: {message}"


def relay_prepare(ctx: StepContext) -> dict[str, int]:
    """Simulates and prices every request of the batch that has no nonce yet, in one JSON-RPC
    batch. A request that reverts fails here, alone and before any nonce is taken, so it leaves
    no gap behind. Requests whose signer cannot pay are split into a batch of their own while
    the others go on. Raises RetryableError when the node is unreachable, or when every request
    left is one whose signer cannot pay."""
    txs = list(batch_open(ctx.run_id).filter(nonce__isnull=True))
    late = [tx for tx in txs if refuse_if_late(tx)]
    for tx in late:
        relay_fail(tx, refuse_if_late(tx))
    txs = [tx for tx in txs if tx not in late]
    if not txs:
        return {"simulated": 0, "failed": len(late)}
    chain = txs[0].chain
    failpoint("relay.simulate")  # tests: a worker killed holding the simulate step's lease
    try:
        simulated = batch_simulate(chain.rpc_url, txs)
        for signer in {tx.signer_id: tx.signer for tx in txs}.values():
            nonce_cursor_ensure(signer=signer, chain=chain)
        fees = suggested_fees(
            w3=web3_for(chain.rpc_url),
            chain_id=chain.chain_id,
            default_tip=int(chain.priority_fee_wei),
            cap=int(chain.max_fee_cap_wei),
        )
    except TRANSPORT_ERRORS as exc:
        raise RpcUnavailable(f"RPC unavailable while simulating: {exc.__class__.__name__}") from exc
    if simulated.held_back:
        # Back to the lane: they join a batch once the request they follow has confirmed.
        RelayTransaction.objects.filter(pk__in=[tx.pk for tx in simulated.held_back]).update(
            workflow_run=None, updated_at=timezone.now()
        )
    priced, failed, short = [], [], []
    for tx in txs:
        result = simulated.results.get(tx)
        if result is None:
            continue  # held back
        if result.error is None:
            tx.gas_limit = int(int(result.result, 16) * GAS_HEADROOM)
            tx.max_fee_per_gas, tx.max_priority_fee_per_gas = fees.max_fee_per_gas, fees.max_priority_fee_per_gas
            tx.phase, tx.updated_at = TxPhase.SUBMITTING, timezone.now()
            priced.append(tx)
        elif (error := _simulation_failure(result)) is None:
            short.append(tx)
        else:
            tx.error = error
            failed.append(tx)
    for tx in followers_of(txs, {tx.pk for tx in failed + late}):
        if tx in failed:
            continue
        tx.error = f"not sent: relay {tx.after_id}, which it follows, failed"
        for group in (priced, short):
            if tx in group:
                group.remove(tx)
        failed.append(tx)
    rows_update(
        RelayTransaction, priced, ["gas_limit", "max_fee_per_gas", "max_priority_fee_per_gas", "phase", "updated_at"]
    )
    relays_finish(failed, phase=TxPhase.FAILED)
    if short:
        if not priced:
            raise RetryableError(f"insufficient funds for {len(short)} request(s) of {_signers(short)}")
        relay_batch_split(short, reason=f"insufficient funds: {_signers(short)}")
    return {"simulated": len(priced), "failed": len(failed) + len(late), "split": len(short)}


def _unsigned(tx: RelayTransaction, *, nonce: int, fees: Fees) -> TransactionDictType:
    return {
        "type": 2,
        "chainId": tx.chain.chain_id,
        "nonce": nonce,
        "to": as_hex(tx.to),
        "value": int(tx.value),
        "data": as_hex(tx.data),
        "gas": int(tx.gas_limit or 21000),
        "maxFeePerGas": fees.max_fee_per_gas,
        "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
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
    """Signs one transaction for the request: a fee bump (the same call), or a nonce filler
    (which overrides what is sent)."""
    unsigned = _unsigned(tx, nonce=nonce, fees=fees)
    overrides = {"to": to, "value": value, "data": data, "gas": gas}
    unsigned.update(
        {
            field: as_hex(given) if isinstance(given, str) else given
            for field, given in overrides.items()
            if given is not None
        }
    )
    return key_manager().sign_transaction(key=tx.signer, tx=unsigned)


def relay_sign(ctx: StepContext) -> dict[str, int]:
    """Takes one nonce per priced request, signs them, and stores the signed bytes: all in one
    transaction (an atomic step), under each signer's nonce cursor lock."""
    txs = list(batch_open(ctx.run_id).filter(nonce__isnull=True).select_for_update(of=("self",)))
    late = [tx for tx in txs if refuse_if_late(tx)]
    for tx in late:  # the last gate: nothing is signed late
        relay_fail(tx, refuse_if_late(tx))
        txs.remove(tx)
    for tx in followers_of(txs, {tx.pk for tx in late}):
        relay_fail(tx, f"not sent: relay {tx.after_id}, which it follows, failed")
        txs.remove(tx)
    by_signer: dict[int, list[RelayTransaction]] = {}
    for tx in txs:
        by_signer.setdefault(tx.signer_id, []).append(tx)
    broadcasts = []
    firsts = (
        nonces_allocate(chain=txs[0].chain, counts={signer_id: len(group) for signer_id, group in by_signer.items()})
        if txs
        else {}
    )
    for signer_id in sorted(by_signer):
        group = by_signer[signer_id]
        signer, first = group[0].signer, firsts[signer_id]
        fees = [Fees(int(tx.max_fee_per_gas or 0), int(tx.max_priority_fee_per_gas or 0)) for tx in group]
        signed = key_manager().sign_transactions(
            key=signer,
            txs=[_unsigned(tx, nonce=first + i, fees=fees[i]) for i, tx in enumerate(group)],
        )
        for i, tx in enumerate(group):
            tx.nonce = first + i
            tx.updated_at = timezone.now()
            broadcasts.append(_broadcast_of(tx, signed[i], nonce=tx.nonce, fees=fees[i], kind=BroadcastKind.ORIGINAL))
    Broadcast.objects.bulk_create(broadcasts)
    rows_update(
        RelayTransaction,
        txs,
        ["nonce", "tx_hash", "raw_tx", "max_fee_per_gas", "max_priority_fee_per_gas", "updated_at"],
    )
    requester_runs_note(txs)
    failpoint("relay.sign_before_commit")
    # This batch's nonces are taken (once this commits): the lane may form the next batch.
    lane_kick(chain_id=ctx.input["chain"], if_waiting=True)
    for tx in txs:
        with correlation(tx.correlation_id or "-"):
            logger.info("relay %s signed nonce %s of %s as %s", tx.id, tx.nonce, tx.signer.address, tx.tx_hash)
    return {"signed": len(txs), "signers": len(by_signer)}


def record_broadcast(
    tx: RelayTransaction, signed: SignedTransaction, *, nonce: int, fees: Fees, kind: str
) -> Broadcast:
    broadcast = _broadcast_of(tx, signed, nonce=nonce, fees=fees, kind=kind)
    broadcast.save(force_insert=True)
    return broadcast


def _broadcast_of(tx: RelayTransaction, signed: SignedTransaction, *, nonce: int, fees: Fees, kind: str) -> Broadcast:
    """The Broadcast row for `signed` (unsaved); an original or a replacement also becomes the
    request's current transaction."""
    tx_hash = "0x" + signed.hash.hex().removeprefix("0x")
    raw = "0x" + signed.raw_transaction.hex().removeprefix("0x")
    if kind != BroadcastKind.FILLER:
        tx.tx_hash, tx.raw_tx = tx_hash, raw
        tx.max_fee_per_gas, tx.max_priority_fee_per_gas = fees.max_fee_per_gas, fees.max_priority_fee_per_gas
    return Broadcast(
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


def relay_broadcast(ctx: StepContext) -> dict[str, int | dict[str, int]]:
    """Sends the stored bytes of every signed, open request of the batch in nonce order, in
    one JSON-RPC batch. Sending again after a crash is harmless: the node answers "already
    known" or "nonce too low" for what it has."""
    txs = list(batch_open(ctx.run_id).filter(nonce__isnull=False).order_by("signer_id", "nonce"))
    if not txs:
        return {"sent": 0}
    chain = txs[0].chain
    failpoint("relay.before_broadcast")
    with sending_lock(chain.pk):
        earlier = unsent_before(ctx.run_id, txs)
        sends = [("eth_sendRawTransaction", [raw]) for raw in [*earlier, *(tx.raw_tx for tx in txs)]]
        results = rpc_batch(chain.rpc_url, sends)[len(earlier) :]
    failpoint("relay.after_broadcast")
    outcomes: dict[str, list[RelayTransaction]] = {}
    for tx, result in zip(txs, results, strict=True):
        outcome = SendOutcome.ACCEPTED if result.error is None else classify_send_message(result.message)
        if outcome is None:
            tx.error = f"node refused the transaction: {result.message}"
            outcome = "refused"
        outcomes.setdefault(outcome, []).append(tx)
    now = timezone.now()
    for outcome, group in outcomes.items():
        Broadcast.objects.filter(tx_hash__in=[tx.tx_hash for tx in group]).update(
            sent_at=now, send_error="" if outcome == SendOutcome.ACCEPTED else outcome
        )
    # A transaction the node refuses outright (bad signature, gas above the block's) fails
    # alone; its nonce is then filled by the monitor.
    relays_finish(outcomes.pop("refused", []), phase=TxPhase.FAILED)
    for tx in outcomes.get(SendOutcome.NONCE_USED, []):
        if not known_on_chain(tx):
            # Our nonce went to a transaction we never signed: the key is used outside the relayer.
            nonce_resync(signer=tx.signer, chain=chain)
            relay_fail(
                tx,
                f"nonce {tx.nonce} of {tx.signer.address} was used by a transaction the relayer did not send; "
                "the nonce cursor was moved past it",
            )
    poor = outcomes.get(SendOutcome.INSUFFICIENT_FUNDS, [])
    if poor and len(poor) == len(txs):
        raise RetryableError(f"insufficient funds for gas * price + value: {_signers(poor)}")
    if poor:
        # Their signers cannot pay: they retry in a batch of their own (re-sending the same
        # bytes once funded) while the rest of this batch goes on to confirmation.
        relay_batch_split(poor, reason=f"insufficient funds: {_signers(poor)}")
    # ACCEPTED and ALREADY_KNOWN are what we want; NONCE_USED by our own hash means it mined
    # already; UNDERPRICED means a transaction with our nonce is pending: confirmation bumps
    # the fee if it does not mine.
    RelayTransaction.objects.filter(workflow_run_id=ctx.run_id, phase=TxPhase.SUBMITTING, nonce__isnull=False).update(
        phase=TxPhase.CONFIRMING, last_broadcast_at=now, updated_at=now
    )
    summary = {outcome: len(group) for outcome, group in outcomes.items()}
    logger.info("relay batch %s broadcast %s transactions: %s", ctx.run_id, len(txs), summary)
    return {"sent": len(txs), "outcomes": summary}


def _signers(txs: list[RelayTransaction]) -> str:
    return ", ".join(sorted({tx.signer.address for tx in txs}))
