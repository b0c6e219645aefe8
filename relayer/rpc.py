"""JSON-RPC access to chains, and what their errors mean for a relay."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import requests
from django.conf import settings
from eth_typing import ChecksumAddress, HexStr
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from orchestrator.engine import RetryableError, TerminalError

__all__ = ["ContractLogicError", "TransactionNotFound", "Web3RPCError", "classify_send_error", "web3_for"]


def as_address(value: str) -> ChecksumAddress:
    return to_checksum_address(value)


def as_hex(value: str) -> HexStr:
    return HexStr(value)


@cache
def _web3(rpc_url: str, timeout: float) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))


def web3_for(rpc_url: str) -> Web3:
    """One client (and its HTTP connection pool) per RPC URL per process."""
    return _web3(rpc_url, settings.RPC_TIMEOUT_SECONDS)


class RpcUnavailable(RetryableError):
    """The node did not answer: down, timing out, or refusing connections."""


# Exceptions that mean "the node is not reachable right now", as opposed to an answer.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


class SendOutcome:
    ACCEPTED = "accepted"
    ALREADY_KNOWN = "already-known"  # the node has exactly this transaction already
    NONCE_USED = "nonce-used"  # "nonce too low": mined already, ours or another's
    UNDERPRICED = "underpriced"  # another transaction holds this nonce in the pool
    INSUFFICIENT_FUNDS = "insufficient-funds"


def classify_send_error(exc: Exception) -> str:
    """Maps a send_raw_transaction error to a SendOutcome. Raises TerminalError for errors no
    retry can fix (bad signature, gas limit above the block's) and RpcUnavailable for transport
    failures."""
    if isinstance(exc, TRANSPORT_ERRORS):
        raise RpcUnavailable(f"RPC unavailable: {exc.__class__.__name__}") from exc
    message = rpc_message(exc).lower()
    if "already known" in message or "known transaction" in message or "already imported" in message:
        return SendOutcome.ALREADY_KNOWN
    if "nonce too low" in message or "nonce is too low" in message:
        return SendOutcome.NONCE_USED
    if "underpriced" in message:
        return SendOutcome.UNDERPRICED
    if "insufficient funds" in message:
        return SendOutcome.INSUFFICIENT_FUNDS
    if isinstance(exc, Web3RPCError):
        raise TerminalError(f"node refused the transaction: {rpc_message(exc)}") from exc
    raise RpcUnavailable(f"unexpected RPC failure: {exc.__class__.__name__}: {exc}") from exc


def rpc_message(exc: Exception) -> str:
    if isinstance(exc, Web3RPCError) and isinstance(exc.rpc_response, dict):
        error = exc.rpc_response.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
    if isinstance(exc, Web3RPCError) and exc.message:
        return str(exc.message)
    return str(exc)


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


_fee_cache: dict[int, tuple[float, int, int]] = {}


def suggested_fees(*, w3: Web3, chain_id: int, default_tip: int, cap: int) -> Fees:
    """EIP-1559 fees from eth_feeHistory: twice the next base fee plus the median tip of recent
    blocks, capped. Cached per chain for RELAYER_FEE_CACHE_SECONDS."""
    now = time.monotonic()
    cached = _fee_cache.get(chain_id)
    if cached is None or cached[0] < now:
        history = w3.eth.fee_history(5, "latest", [50])
        base = int(history["baseFeePerGas"][-1])
        tips = sorted(int(r[0]) for r in history.get("reward", []) if r and int(r[0]) > 0)
        tip = tips[len(tips) // 2] if tips else default_tip
        _fee_cache[chain_id] = (now + settings.RELAYER_FEE_CACHE_SECONDS, base, tip)
        cached = _fee_cache[chain_id]
    _, base, tip = cached
    max_fee = min(2 * base + tip, cap)
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(tip, max_fee))


def bumped_fees(*, previous: Fees, suggested: Fees, cap: int) -> Fees | None:
    """Replacement fees: both at least 12.5% above the previous ones (nodes demand 10%), and
    never below what the market suggests now; None if the cap leaves no room to bump."""
    tip = max(
        -(-previous.max_priority_fee_per_gas * 9 // 8),
        previous.max_priority_fee_per_gas + 1,
        suggested.max_priority_fee_per_gas,
    )
    fee = max(-(-previous.max_fee_per_gas * 9 // 8), previous.max_fee_per_gas + 1, suggested.max_fee_per_gas)
    if fee > cap:
        return None
    return Fees(max_fee_per_gas=fee, max_priority_fee_per_gas=min(tip, fee))
