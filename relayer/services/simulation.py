"""Simulating a batch's requests before any nonce is taken: the gas each needs, or why it fails.

A request on its own is simulated with eth_estimateGas against the latest block. A signer's
requests that depend on each other (one `after` another in the same batch: a deposit of what a
withdrawal frees) are simulated as one sequence with eth_simulateV1, each on the state the
ones before it leave, exactly as they will execute at consecutive nonces. All of it goes to
the node as one JSON-RPC batch.

eth_simulateV1 reports the gas a call used, after refunds; the limit it needs can be higher,
since refunds are paid back only at the end. EIP-3529 caps a refund at a fifth of the gas
used, so the used gas times 1.25 covers execution; the caller adds its usual headroom on top.

A node without eth_simulateV1 cannot say what a dependent request would do, so such requests
are held back: they go in a later batch, once the request they follow has confirmed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from relayer.models import RelayTransaction
from relayer.rpc import Json, RpcResult, rpc_batch

REFUND_CAP = 1.25  # EIP-3529: refunds are at most gas used / 5
ERROR_STRING = bytes.fromhex("08c379a0")  # the selector of Error(string)
UNSUPPORTED_CODES = (-32601, -32602)  # method not found; invalid params (an older dialect of it)


@dataclass
class Simulated:
    # Per request simulated: `result` is the gas it needs (hex, as eth_estimateGas answers),
    # or `error` why not ("insufficient funds", a revert...).
    results: dict[RelayTransaction, RpcResult] = field(default_factory=dict)
    # Requests the node could not simulate after the ones they follow: for a later batch.
    held_back: list[RelayTransaction] = field(default_factory=list)


def _call(tx: RelayTransaction) -> dict[str, str]:
    return {"from": tx.signer.address, "to": tx.to, "value": hex(int(tx.value)), "data": tx.data}


def _estimate(tx: RelayTransaction) -> tuple[str, list[dict[str, str]]]:
    return ("eth_estimateGas", [_call(tx)])


def _sequence(txs: list[RelayTransaction]) -> tuple[str, list[Json]]:
    block: Json = {"calls": [_call(tx) for tx in txs]}
    return ("eth_simulateV1", [{"blockStateCalls": [block], "validation": False}, "latest"])


def _unsupported(answer: RpcResult) -> bool:
    code = (answer.error or {}).get("code")
    text = answer.message.lower()
    return code in UNSUPPORTED_CODES or "not supported" in text or "does not exist" in text


def _revert_reason(data: str) -> str:
    """The message of a Solidity Error(string) revert, or ""."""
    payload = bytes.fromhex(data.removeprefix("0x")) if data else b""
    if payload[:4] != ERROR_STRING:
        return ""
    try:
        return str(abi_decode(["string"], payload[4:])[0])
    except (DecodingError, ValueError):
        return ""


def _call_result(call: Mapping[str, object]) -> RpcResult:
    if str(call.get("status")) == "0x1":
        return RpcResult(result=hex(int(int(str(call["gasUsed"]), 16) * REFUND_CAP)))
    # As eth_estimateGas words it ("execution reverted: <reason>"), so failures read alike.
    reason = _revert_reason(str(call.get("returnData") or ""))
    return RpcResult(error={"message": f"execution reverted: {reason}" if reason else "execution reverted"})


def batch_simulate(rpc_url: str, txs: list[RelayTransaction]) -> Simulated:
    """Simulates `txs` (in nonce order) in one JSON-RPC batch. Raises RpcUnavailable when the
    node cannot be reached."""
    in_batch = {tx.pk for tx in txs}
    sequenced = {tx.signer_id for tx in txs if tx.after_id in in_batch}
    alone = [tx for tx in txs if tx.signer_id not in sequenced]
    groups: dict[int, list[RelayTransaction]] = {}
    for tx in txs:
        if tx.signer_id in sequenced:
            groups.setdefault(tx.signer_id, []).append(tx)
    answers = rpc_batch(rpc_url, [_estimate(tx) for tx in alone] + [_sequence(g) for g in groups.values()])
    out = Simulated(results=dict(zip(alone, answers, strict=False)))
    fallback = []
    for group, answer in zip(groups.values(), answers[len(alone) :], strict=True):
        if answer.error is not None and _unsupported(answer):
            out.held_back += [tx for tx in group if tx.after_id in in_batch]
            fallback += [tx for tx in group if tx.after_id not in in_batch]
        elif answer.error is not None:  # the whole sequence: the signer cannot pay, say
            out.results.update((tx, answer) for tx in group)
        else:
            calls = answer.result[0]["calls"]
            out.results.update((tx, _call_result(call)) for tx, call in zip(group, calls, strict=True))
    if fallback:
        out.results.update(zip(fallback, rpc_batch(rpc_url, [_estimate(tx) for tx in fallback]), strict=True))
    return out
