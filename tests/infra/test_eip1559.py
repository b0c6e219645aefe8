"""The direct type-2 signer gives eth_account's SignedTransaction, byte for byte, on random
transactions and the edge values of each field; a dict of any other shape is left to
eth_account (None), which signs it or says what is wrong with it."""

from __future__ import annotations

from typing import Any

import coincurve
import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.infra.eip1559 import sign_dynamic_fee

uint256 = st.integers(min_value=0, max_value=2**256 - 1)
small = st.integers(min_value=0, max_value=2**64 - 1)
edges = st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x100, 2**55, 2**56, 2**64 - 1, 2**256 - 1])
addresses = st.binary(min_size=20, max_size=20).map(lambda raw: to_checksum_address("0x" + raw.hex()))
# Short data and data around RLP's 55-byte boundary, where the length takes bytes of its own.
payloads = st.binary(max_size=300).map(lambda raw: "0x" + raw.hex())
secrets = st.binary(min_size=32, max_size=32).filter(
    lambda raw: 0 < int.from_bytes(raw, "big") < 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
)


@st.composite
def transactions(draw: st.DrawFn) -> dict[str, Any]:
    tx: dict[str, Any] = {
        "chainId": draw(st.integers(min_value=1, max_value=2**64 - 1) | st.just(31337)),
        "nonce": draw(small | edges.filter(lambda n: n < 2**64)),
        "to": draw(addresses),
        "gas": draw(st.integers(min_value=21000, max_value=2**63 - 1)),
        "maxFeePerGas": draw(uint256 | edges),
        "maxPriorityFeePerGas": draw(uint256 | edges),
    }
    # Fields eth_account defaults when absent, present or not.
    if draw(st.booleans()):
        tx["type"] = draw(st.sampled_from([2, "0x2"]))
    if draw(st.booleans()):
        tx["value"] = draw(uint256 | edges)
    if draw(st.booleans()):
        tx["data"] = draw(payloads)
    if draw(st.booleans()):
        tx["accessList"] = []
    return tx


@settings(max_examples=300, deadline=None)
@given(secret=secrets, tx=transactions())
def test_a_type_2_transaction_is_signed_as_eth_account_signs_it(secret: bytes, tx: dict[str, Any]) -> None:
    ours = sign_dynamic_fee(coincurve.PrivateKey(secret), tx)
    theirs = Account.sign_transaction(tx, secret)
    assert ours is not None
    assert ours == theirs
    assert (ours.raw_transaction, ours.hash, ours.r, ours.s, ours.v) == (
        theirs.raw_transaction,
        theirs.hash,
        theirs.r,
        theirs.s,
        theirs.v,
    )
    assert Account.recover_transaction(ours.raw_transaction) == Account.from_key(secret).address


BASE = {
    "type": 2,
    "chainId": 31337,
    "nonce": 0,
    "to": "0x000000000000000000000000000000000000bEEF",
    "value": 1,
    "data": "0x",
    "gas": 21000,
    "maxFeePerGas": 2 * 10**9,
    "maxPriorityFeePerGas": 10**9,
}


@pytest.mark.parametrize(
    "change",
    [
        {"accessList": [{"address": BASE["to"], "storageKeys": []}]},
        {"type": 1, "gasPrice": 10**9, "maxFeePerGas": None},
        {"to": None},
        {"to": "0x000000000000000000000000000000000000BeEF"},  # a wrong EIP-55 checksum
        {"to": "0x000000000000000000000000000000000000beef"},  # none (eth_account refuses both)
        {"to": b"\x00" * 19 + b"\xbe"},
        {"value": True},
        {"value": -1},
        {"nonce": "0x1"},
        {"data": "0xabc"},
        {"data": b"\x01"},
        {"from": "0x000000000000000000000000000000000000bEEF"},
    ],
    ids=lambda change: ",".join(change),
)
def test_any_other_shape_is_left_to_eth_account(change: dict[str, Any]) -> None:
    tx = {**BASE, **change}
    tx = {k: v for k, v in tx.items() if v is not None or k == "to"}
    if change.get("to", "") is None:
        del tx["to"]
    assert sign_dynamic_fee(coincurve.PrivateKey(b"\x01" * 32), tx) is None
