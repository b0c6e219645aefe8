"""The module's custom errors in words: `module_error(revert_data)` names the rule an intent
broke ("WrongNonce: ..."), so a refusal made off chain can name the same rule as the revert."""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak

from vaults import onchain

ERROR_STRING = keccak(text="Error(string)")[:4]

# Why each rule exists, in words for people; the arguments follow in parentheses.
MODULE_ERRORS: dict[str, str] = {
    "NotSafe": "only the Safe itself (a transaction of its owners) may change the module",
    "BadSignature": "the intent is not signed by the module's operator (or was signed under another policy)",
    "WrongNonce": "the intent's nonce is not the module's next one (replayed or out of order)",
    "Expired": "the intent's deadline has passed",
    "TargetNotAllowed": "the committed policy does not allow this target and selector",
    "SpendingLimitExceeded": "the amount exceeds what the token's spending limit leaves in this period",
    "CallFailed": "a call of the intent failed, so none of it happened",
    "LengthMismatch": "the policy's targets and selectors differ in number",
    "ZeroAddress": "the module needs a Safe address",
    "ArgumentNotAllowed": "an argument the committed policy binds (the receiver, owner or spender) is not allowed",
    "DelegateCallNotAllowed": "the module makes plain calls only, never a DELEGATECALL",
    "WrongSubaccount": "the request is signed for another subaccount than this Safe",
    "UnknownExecutor": "the request is not signed by an executor this Safe registered",
    "RequestReplayed": "this requestID was executed before",
    "ValidationExpired": "the validator's signature has expired",
    "BadValidatorSignature": "the request is not countersigned by the module's validator under the committed policy",
}


@dataclass(frozen=True)
class ModuleRevert:
    name: str
    args: dict[str, Any]


@cache
def _errors() -> dict[bytes, tuple[str, list[str], list[str]]]:
    """selector -> (name, argument names, argument types), for the module's errors and the
    ones the demo contracts (OpenZeppelin's ERC-20 and ERC-4626) revert with inside a call."""
    found: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for contract in onchain.compiled().values():
        for item in contract.abi:
            if item.get("type") != "error":
                continue
            types = [i["type"] for i in item["inputs"]]
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            found[selector] = (item["name"], [i["name"] for i in item["inputs"]], types)
    return found


def _payloads(revert_data_or_message: str | bytes) -> list[bytes]:
    """The candidate revert data in a message, longest first: a node's message may name an
    address or a selector before the data itself."""
    if isinstance(revert_data_or_message, bytes):
        return [revert_data_or_message]
    found = re.findall(r"0x([0-9a-fA-F]{8,})", revert_data_or_message or "")
    return [bytes.fromhex(h) for h in sorted(found, key=len, reverse=True) if len(h) % 2 == 0]


def _payload(revert_data_or_message: str | bytes) -> bytes | None:
    found = _payloads(revert_data_or_message)
    return found[0] if found else None


def _decoded(raw: bytes) -> ModuleRevert | None:
    if len(raw) < 4 or raw[:4] not in _errors():
        return None
    name, names, types = _errors()[raw[:4]]
    try:
        values = abi_decode(types, raw[4:])
    except Exception:  # a selector collision or truncated data: not this error after all
        return None
    return ModuleRevert(name=name, args=dict(zip(names, values, strict=True)))


def module_revert(revert_data_or_message: str | bytes) -> ModuleRevert | None:
    """The custom error in revert data (0x-hex, bytes, or a message that carries it), decoded;
    None when it is not one the module or the demo contracts declare."""
    for raw in _payloads(revert_data_or_message):
        decoded = _decoded(raw)
        if decoded is not None:
            return decoded
    return None


def _word(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def module_error(revert_data_or_message: str | bytes) -> str:
    """ "WrongNonce: the intent's nonce is not the module's next one (expected=3, given=2)".
    A CallFailed carries the failed call's own reason, decoded the same way. Anything else
    comes back as an Error(string)'s text, or as it is."""
    decoded = module_revert(revert_data_or_message)
    if decoded is None:
        raw = _payload(revert_data_or_message)
        if raw is not None and raw[:4] == ERROR_STRING:
            with suppress(Exception):
                (text,) = abi_decode(["string"], raw[4:])
                return str(text)
        return revert_data_or_message.hex() if isinstance(revert_data_or_message, bytes) else revert_data_or_message
    return module_error_of(decoded)


def module_error_of(decoded: ModuleRevert) -> str:
    """A decoded error in words: its name, why the rule exists, its arguments."""
    words = MODULE_ERRORS.get(decoded.name, "a call reverted")
    if decoded.name == "CallFailed":
        inner = bytes(decoded.args["reason"])
        reason = module_error(inner) if inner else "no reason given"
        return f"CallFailed: {words} (call {decoded.args['index']}: {reason})"
    args = ", ".join(f"{k}={_word(v)}" for k, v in decoded.args.items())
    return f"{decoded.name}: {words}" + (f" ({args})" if args else "")
