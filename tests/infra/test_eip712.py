"""The compiled EIP-712 encoder gives what eth_account's encode_typed_data gives, for every type
set the system signs or verifies, on random messages and the edge values of each field type."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.automations.typed_data import EXECUTION_REQUEST_TYPES, KERNEL_ACTION_TYPES, KERNEL_DOMAIN
from orchestrator.infra.eip712 import TypeNotCompiled, primary_type, typed_data_signable
from vaults.module.intents import INTENT_TYPES as MODULE_INTENT_TYPES
from vaults.module.requests import REQUEST_DOMAIN, REQUEST_TYPES, VALIDATION_TYPES
from vaults.safe.transactions import SAFE_TX_TYPES
from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES
from vaults.services.intents import INTENT_TYPES

addresses = st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())
texts = st.text(max_size=40)
uint256 = st.integers(min_value=0, max_value=2**256 - 1)
uint8 = st.integers(min_value=0, max_value=255)
bytes32 = st.binary(min_size=32, max_size=32)
blobs = st.binary(max_size=200).map(lambda raw: "0x" + raw.hex())
uint_text = uint256.map(str) | uint256.map(hex)  # uint as decimal or 0x-hex text, as eth_account takes it

FIELD_VALUES = {
    "address": addresses,
    "string": texts,
    "uint256": uint256 | uint_text,
    "uint8": uint8,
    "bytes32": bytes32 | bytes32.map(lambda raw: "0x" + raw.hex()),
    "bytes": blobs | st.binary(max_size=64),
    "bool": st.booleans(),
}


def messages(types: dict[str, list[dict[str, str]]], name: str) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in types[name]:
        kind = field["type"]
        if kind.endswith("[]"):
            item = kind[:-2]
            inner = messages(types, item) if item in types else FIELD_VALUES[item]
            fields[field["name"]] = st.lists(inner, max_size=4)
        elif kind in types:
            fields[field["name"]] = messages(types, kind)
        else:
            fields[field["name"]] = FIELD_VALUES[kind]
    return st.fixed_dictionaries(fields)


domains = st.fixed_dictionaries(
    {},
    optional={"name": texts, "version": texts, "chainId": st.integers(1, 2**64), "verifyingContract": addresses},
)

TYPE_SETS = {
    "feed": (FEED_DOMAIN, FEED_TYPES),
    "intent": ({"name": "Vault Orchestrator", "version": "1", "chainId": 31337}, INTENT_TYPES),
    "module intent": ({"name": "VaultPolicyModule", "version": "1", "chainId": 1}, MODULE_INTENT_TYPES),
    "module request": (REQUEST_DOMAIN, REQUEST_TYPES),
    "validation": (REQUEST_DOMAIN, VALIDATION_TYPES),
    "kernel action": (KERNEL_DOMAIN, KERNEL_ACTION_TYPES),
    "execution request": (KERNEL_DOMAIN, EXECUTION_REQUEST_TYPES),
    "safe tx": ({"chainId": 31337}, {k: v for k, v in SAFE_TX_TYPES.items() if k != "EIP712Domain"}),
}


@pytest.mark.parametrize("name", TYPE_SETS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_same_hash_as_eth_account(name: str, data: st.DataObject) -> None:
    default_domain, types = TYPE_SETS[name]
    domain = data.draw(domains | st.just(default_domain))
    message = data.draw(messages(types, primary_type(types)))
    expected = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
    assert typed_data_signable(domain=domain, types=types, message=message) == expected


def test_an_empty_array_and_a_missing_field() -> None:
    message = {"oracle": "0x" + "11" * 20, "timestamp": 1, "entries": []}
    expected = encode_typed_data(domain_data=FEED_DOMAIN, message_types=FEED_TYPES, message_data=message)
    assert typed_data_signable(domain=FEED_DOMAIN, types=FEED_TYPES, message=message) == expected
    with pytest.raises(ValueError, match="missing field 'timestamp'"):
        typed_data_signable(domain=FEED_DOMAIN, types=FEED_TYPES, message={"oracle": message["oracle"], "entries": []})


@pytest.mark.parametrize(
    ("kind", "value", "error"),
    [
        ("uint8", 256, "does not fit in uint8"),
        ("uint256", -1, "does not fit in uint256"),
        ("address", "0x1234", "not an address"),
        ("bytes32", "0x" + "00" * 33, "do not fit in bytes32"),
    ],
)
def test_values_out_of_their_type_are_refused(kind: str, value: Any, error: str) -> None:
    types = {"T": [{"name": "x", "type": kind}]}
    with pytest.raises(ValueError, match=error):
        typed_data_signable(domain={"name": "n"}, types=types, message={"x": value})


def test_types_it_does_not_compile_are_hashed_by_eth_account() -> None:
    types = {"T": [{"name": "x", "type": "uint8[2]"}, {"name": "y", "type": "string[][]"}]}
    message = {"x": [1, 2], "y": [["a"], []]}
    with pytest.raises(TypeNotCompiled):
        primary_type(types)
    expected = encode_typed_data(domain_data={"name": "n"}, message_types=types, message_data=message)
    assert typed_data_signable(domain={"name": "n"}, types=types, message=message) == expected
