"""relayer/rpc.py: fee bumps, suggested fees and what a node's send errors mean. No worker;
anvil only where a real node's answer is the point."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import Web3RPCError

from orchestrator.engine import RetryableError, TerminalError
from relayer.rpc import (
    Fees,
    RpcUnavailable,
    SendOutcome,
    _fee_cache,
    bumped_fees,
    classify_send_error,
    suggested_fees,
)
from tests.support.relays import RECEIVER

# --- bumped_fees ----------------------------------------------------------------------------


GWEI = 10**9


def at_least_an_eighth_more(new: int, old: int) -> bool:
    return new * 8 >= old * 9 and new > old


@st.composite
def fee_situations(draw: st.DrawFn) -> tuple[Fees, Fees, int]:
    """A previous broadcast, what the market suggests now and the chain's cap. Like the callers,
    the suggestion comes from suggested_fees, so it is within the cap and its tip within its fee."""
    previous_fee = draw(st.integers(min_value=1, max_value=10**6 * GWEI))
    previous_tip = draw(st.integers(min_value=0, max_value=previous_fee))
    cap = draw(st.integers(min_value=1, max_value=2 * 10**6 * GWEI))
    suggested_fee = draw(st.integers(min_value=1, max_value=cap))
    suggested_tip = draw(st.integers(min_value=0, max_value=suggested_fee))
    return Fees(previous_fee, previous_tip), Fees(suggested_fee, suggested_tip), cap


@hypothesis_settings(max_examples=500, deadline=None)
@given(fee_situations())
def test_a_fee_bump_raises_both_fees_by_an_eighth_never_below_the_suggestion_within_the_cap(
    situation: tuple[Fees, Fees, int],
) -> None:
    previous, suggested, cap = situation
    bumped = bumped_fees(previous=previous, suggested=suggested, cap=cap)
    least_fee = max(-(-previous.max_fee_per_gas * 9 // 8), previous.max_fee_per_gas + 1)
    if bumped is None:
        assert least_fee > cap  # only when even the smallest acceptable bump is above the cap
        return
    assert at_least_an_eighth_more(bumped.max_fee_per_gas, previous.max_fee_per_gas)
    assert at_least_an_eighth_more(bumped.max_priority_fee_per_gas, previous.max_priority_fee_per_gas)
    assert bumped.max_fee_per_gas >= suggested.max_fee_per_gas
    assert bumped.max_priority_fee_per_gas >= suggested.max_priority_fee_per_gas
    assert bumped.max_priority_fee_per_gas <= bumped.max_fee_per_gas <= cap


@pytest.mark.parametrize(
    ("previous", "suggested", "cap", "expected"),
    [
        (Fees(100, 10), Fees(50, 5), 1000, Fees(113, 12)),  # ceil(112.5), ceil(11.25)
        (Fees(100, 10), Fees(300, 40), 1000, Fees(300, 40)),  # the market moved further
        (Fees(1, 0), Fees(1, 0), 10, Fees(2, 1)),  # tiny fees still go up by at least 1 wei
        (Fees(100, 10), Fees(50, 5), 113, Fees(113, 12)),  # exactly at the cap
        (Fees(100, 10), Fees(50, 5), 112, None),  # the cap leaves no room
        (Fees(500 * GWEI, GWEI), Fees(500 * GWEI, GWEI), 500 * GWEI, None),  # already at the cap
    ],
)
def test_bumped_fees_examples(previous: Fees, suggested: Fees, cap: int, expected: Fees | None) -> None:
    assert bumped_fees(previous=previous, suggested=suggested, cap=cap) == expected


# --- suggested_fees -------------------------------------------------------------------------


class FeeHistoryNode:
    """Answers eth_feeHistory with a fixed history, and counts the calls."""

    def __init__(self, base_fees: list[int], rewards: list[list[int]]) -> None:
        self.history = {"baseFeePerGas": base_fees, "reward": rewards}
        self.calls = 0
        self.eth = self

    def fee_history(self, *args: Any) -> dict[str, Any]:
        self.calls += 1
        return self.history


@pytest.fixture
def fresh_fee_cache(settings: Any) -> Iterator[None]:
    settings.RELAYER_FEE_CACHE_SECONDS = 60.0
    _fee_cache.clear()
    yield
    _fee_cache.clear()


@pytest.mark.usefixtures("fresh_fee_cache")
def test_suggested_fees_are_twice_the_next_base_fee_plus_the_median_tip_within_the_cap() -> None:
    node = FeeHistoryNode([10 * GWEI, 12 * GWEI, 20 * GWEI], [[3 * GWEI], [0], [GWEI], [2 * GWEI]])
    fees = suggested_fees(w3=node, chain_id=900001, default_tip=7, cap=500 * GWEI)
    assert fees == Fees(42 * GWEI, 2 * GWEI)
    capped = suggested_fees(w3=node, chain_id=900001, default_tip=7, cap=30 * GWEI)
    assert capped == Fees(30 * GWEI, 2 * GWEI)
    assert suggested_fees(w3=node, chain_id=900001, default_tip=7, cap=GWEI) == Fees(GWEI, GWEI)
    assert node.calls == 1  # cached per chain


@pytest.mark.usefixtures("fresh_fee_cache")
def test_suggested_fees_use_the_default_tip_when_recent_blocks_paid_none() -> None:
    node = FeeHistoryNode([5, 7], [[0], [0]])
    assert suggested_fees(w3=node, chain_id=900002, default_tip=3, cap=10**18) == Fees(17, 3)


@pytest.mark.usefixtures("fresh_fee_cache")
def test_suggested_fees_from_anvil_are_consistent(anvil: str) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil))
    fees = suggested_fees(w3=w3, chain_id=900003, default_tip=GWEI, cap=500 * GWEI)
    base = int(w3.eth.fee_history(1, "latest", [50])["baseFeePerGas"][-1])
    assert 0 < fees.max_priority_fee_per_gas <= fees.max_fee_per_gas <= 500 * GWEI
    assert fees.max_fee_per_gas >= base


# --- classify_send_error --------------------------------------------------------------------


def rpc_error(message: str, code: int = -32000) -> Web3RPCError:
    response = {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}
    return Web3RPCError(str(response["error"]), rpc_response=response)  # as web3 raises it


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("nonce too low", SendOutcome.NONCE_USED),
        ("nonce too low: next nonce 5, tx nonce 3", SendOutcome.NONCE_USED),
        ("Nonce is too low", SendOutcome.NONCE_USED),
        ("already known", SendOutcome.ALREADY_KNOWN),
        ("known transaction: 0xabc", SendOutcome.ALREADY_KNOWN),
        ("transaction already imported", SendOutcome.ALREADY_KNOWN),
        ("replacement transaction underpriced", SendOutcome.UNDERPRICED),
        ("transaction underpriced", SendOutcome.UNDERPRICED),
        ("insufficient funds for gas * price + value", SendOutcome.INSUFFICIENT_FUNDS),
        ("Insufficient funds for gas * price + value", SendOutcome.INSUFFICIENT_FUNDS),
    ],
)
def test_known_send_errors_map_to_their_outcome(message: str, outcome: str) -> None:
    assert classify_send_error(rpc_error(message)) == outcome


def test_a_send_error_without_a_response_body_is_classified_by_its_message() -> None:
    assert classify_send_error(Web3RPCError("nonce too low")) == SendOutcome.NONCE_USED
    odd_body = Web3RPCError("already known", rpc_response={"jsonrpc": "2.0", "id": 1, "error": "?"})
    assert classify_send_error(odd_body) == SendOutcome.ALREADY_KNOWN


@pytest.mark.parametrize(
    "message", ["invalid sender", "intrinsic gas too low", "exceeds block gas limit", "tx fee exceeds cap"]
)
def test_an_unknown_rpc_error_is_terminal_and_says_what_the_node_said(message: str) -> None:
    with pytest.raises(TerminalError, match=re.escape(message)) as info:
        classify_send_error(rpc_error(message))
    assert not isinstance(info.value, RetryableError)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ReadTimeout("slow"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("timed out"),
    ],
    ids=lambda exc: exc.__class__.__name__,
)
def test_a_transport_failure_is_rpc_unavailable_and_retryable(exc: Exception) -> None:
    with pytest.raises(RpcUnavailable, match="RPC unavailable") as info:
        classify_send_error(exc)
    assert isinstance(info.value, RetryableError) and info.value.__cause__ is exc


def test_an_unexpected_non_rpc_failure_is_retried_rather_than_failing_the_relay() -> None:
    with pytest.raises(RpcUnavailable, match="unexpected RPC failure: ValueError: garbled"):
        classify_send_error(ValueError("garbled"))


def test_a_real_nonce_too_low_from_anvil_is_classified_as_nonce_used(anvil: str) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil))
    sender = w3.eth.accounts[0]
    w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": sender, "to": RECEIVER, "value": 1}))
    with pytest.raises(Web3RPCError) as info:
        w3.eth.send_transaction({"from": sender, "to": RECEIVER, "value": 1, "nonce": 0})
    assert classify_send_error(info.value) == SendOutcome.NONCE_USED
