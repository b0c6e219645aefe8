"""JSON-RPC access to chains, and what their errors mean for a relay."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeAlias

import requests
from django.conf import settings
from eth_typing import ChecksumAddress, HexStr
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from orchestrator.engine import RetryableError, TerminalError

__all__ = [
    "ContractLogicError",
    "RpcResult",
    "TransactionNotFound",
    "Web3RPCError",
    "classify_send_error",
    "rpc_batch",
    "web3_for",
]


def as_address(value: str) -> ChecksumAddress:
    return to_checksum_address(value)


def as_hex(value: str) -> HexStr:
    return HexStr(value)


@cache
def _web3(rpc_url: str, timeout: float) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, session=_session(rpc_url)))


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


@cache
def _session(rpc_url: str) -> requests.Session:
    """One HTTP session (and connection pool) per RPC URL per process, for web3 and rpc_batch.

    The environment's proxy and CA bundle settings are read once, here: requests otherwise
    reads them again on every request (trust_env), which cost ~0.7 ms a call here, a third of
    a local node's answer. (.netrc is not read: put an RPC URL's credentials in the URL.)"""
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(rpc_url))
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
    return session


# A JSON value, as JSON-RPC parameters are sent.
Json: TypeAlias = "bool | int | float | str | Sequence[Json] | Mapping[str, Json] | None"


@dataclass(frozen=True)
class RpcResult:
    """One answer of a batch: `result`, or the node's `error` ({code, message, data})."""

    result: Any = None  # JSON as the node sent it: its shape depends on the method
    error: dict[str, object] | None = None

    @property
    def message(self) -> str:
        return str((self.error or {}).get("message", ""))


def rpc_batch(
    rpc_url: str, calls: Sequence[tuple[str, Sequence[Json]]], *, timeout: float | None = None
) -> list[RpcResult]:
    """Sends many JSON-RPC calls in one HTTP request (a JSON-RPC batch) and returns their
    answers in the order asked. A relay batch of 100 transactions costs one round trip per
    step this way, instead of 100. `timeout` (seconds) defaults to RPC_TIMEOUT_SECONDS.
    Raises RpcUnavailable when the node cannot be reached or does not answer the batch as a
    batch."""
    if not calls:
        return []
    payload: list[Json] = [
        {"jsonrpc": "2.0", "id": i, "method": method, "params": params} for i, (method, params) in enumerate(calls)
    ]
    try:
        response = _session(rpc_url).post(rpc_url, json=payload, timeout=timeout or settings.RPC_TIMEOUT_SECONDS)
        response.raise_for_status()
        answers = response.json()
    except TRANSPORT_ERRORS as exc:
        raise RpcUnavailable(f"RPC unavailable: {exc.__class__.__name__}") from exc
    except (requests.exceptions.RequestException, ValueError) as exc:
        raise RpcUnavailable(f"RPC answered a batch with something else: {exc}") from exc
    if not isinstance(answers, list):
        raise RpcUnavailable(f"RPC answered a batch with a single response: {str(answers)[:200]}")
    by_id = {answer.get("id"): answer for answer in answers if isinstance(answer, dict)}
    results = []
    for i in range(len(calls)):
        answer = by_id.get(i)
        if answer is None:
            raise RpcUnavailable(f"RPC left call {i} of a batch of {len(calls)} unanswered")
        error = answer.get("error")
        results.append(
            RpcResult(error=error if isinstance(error, dict) else {"message": str(error)})
            if error
            else RpcResult(result=answer.get("result"))
        )
    return results


class SendOutcome:
    ACCEPTED = "accepted"
    ALREADY_KNOWN = "already-known"  # the node has exactly this transaction already
    NONCE_USED = "nonce-used"  # "nonce too low": mined already, ours or another's
    UNDERPRICED = "underpriced"  # another transaction holds this nonce in the pool
    INSUFFICIENT_FUNDS = "insufficient-funds"


def classify_send_message(message: str) -> str | None:
    """The SendOutcome a node's error message means, or None if it is none of the known ones."""
    message = message.lower()
    if "already known" in message or "known transaction" in message or "already imported" in message:
        return SendOutcome.ALREADY_KNOWN
    if "nonce too low" in message or "nonce is too low" in message:
        return SendOutcome.NONCE_USED
    if "underpriced" in message:
        return SendOutcome.UNDERPRICED
    if "insufficient funds" in message:
        return SendOutcome.INSUFFICIENT_FUNDS
    return None


def classify_send_error(exc: Exception) -> str:
    """Maps a send_raw_transaction error to a SendOutcome. Raises TerminalError for errors no
    retry can fix (bad signature, gas limit above the block's) and RpcUnavailable for transport
    failures."""
    if isinstance(exc, TRANSPORT_ERRORS):
        raise RpcUnavailable(f"RPC unavailable: {exc.__class__.__name__}") from exc
    outcome = classify_send_message(rpc_message(exc))
    if outcome is not None:
        return outcome
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
