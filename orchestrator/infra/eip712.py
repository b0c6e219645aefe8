"""EIP-712 typed data hashed by compiled encoders: what eth_account's encode_typed_data computes,
for the type sets the hot paths sign and verify (feeds, intents, the module's intents).

encode_typed_data re-parses the types, re-derives every type string and ABI-encodes through
eth_abi's registry on every call: about 1 ms for a feed on this machine, paid at the feed's
accept, again at verify, and twice when an intent is signed. Here the types are compiled once
per type set (type hashes, each field's encoder) and a message costs its keccaks.

Same semantics as eth_account 0.13 for the values those type sets carry: uint/int as int or
decimal or 0x-hex string, address as hex, bool, string, bytes and bytesN as bytes or 0x-hex,
structs, and one-dimensional arrays of any of them. A type set with anything else (nested
arrays, fixed-size arrays) is not compiled (TypeNotCompiled) and is hashed by eth_account.
tests/infra/test_eip712.py compares both on random messages.

Pure Python (no Django): the executor side imports orchestrator.infra.signatures, and may this."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak

Encoder = Callable[[Any], bytes]  # a field's value -> its 32-byte word in the struct's encoding

# The fields of EIP712Domain in the order the type string lists them: eth_account derives the
# domain's type from the keys present, in this order.
DOMAIN_FIELDS: tuple[tuple[str, str], ...] = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
    ("salt", "bytes32"),
)
EMPTY_ARRAY_HASH = keccak(b"")
_INT_TYPE = re.compile(r"^(u?)int(\d*)$")
_FIXED_BYTES = re.compile(r"^bytes(\d+)$")


class TypeNotCompiled(ValueError):
    """A type this module does not compile (the caller uses eth_account instead)."""


def _int_value(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16) if value[:2] in ("0x", "0X") else int(value)
    raise TypeError(f"not an integer: {value!r}")


def _int_encoder(signed: bool, bits: int) -> Encoder:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    def encode(value: Any) -> bytes:
        number = _int_value(value)
        if not low <= number <= high:
            raise ValueError(f"{number} does not fit in {'int' if signed else 'uint'}{bits}")
        return number.to_bytes(32, "big", signed=True) if signed else number.to_bytes(32, "big")

    return encode


def _bytes_value(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        if value[:2] in ("0x", "0X"):
            return bytes.fromhex(value[2:] if len(value) % 2 == 0 else "0" + value[2:])
        return value.encode()
    if isinstance(value, int):
        value = max(value, 0)
        return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    raise TypeError(f"not bytes: {value!r}")


def _address(value: Any) -> bytes:
    raw = _bytes_value(value) if not isinstance(value, str) or value[:2] in ("0x", "0X") else None
    if raw is None or len(raw) != 20:
        raise ValueError(f"not an address: {value!r}")
    return bytes(12) + raw


def _bool(value: Any) -> bytes:
    false = not value or value in ("False", "false", "0")
    return bytes(31) + (b"\x00" if false else b"\x01")


def _string(value: Any) -> bytes:
    if value is None:
        return keccak(b"")
    if isinstance(value, int):
        return keccak(_bytes_value(value))
    return keccak(str(value).encode())


def _dynamic_bytes(value: Any) -> bytes:
    return keccak(b"" if value is None else _bytes_value(value))


def _fixed_bytes(size: int) -> Encoder:
    def encode(value: Any) -> bytes:
        raw = _bytes_value(value)
        if len(raw) > size:
            raise ValueError(f"{len(raw)} bytes do not fit in bytes{size}")
        return raw.ljust(32, b"\x00")

    return encode


class _Compiled:
    """One type set: each struct's type hash and field encoders, built once."""

    def __init__(self, types: Mapping[str, list[Mapping[str, str]]]) -> None:
        self.types = {name: [(f["name"], f["type"]) for f in fields] for name, fields in types.items()}
        self.type_hashes = {name: keccak(self._encode_type(name).encode()) for name in self.types}
        self.fields: dict[str, list[tuple[str, Encoder]]] = {}
        for name, fields in self.types.items():
            self.fields[name] = [(field, self._encoder(kind)) for field, kind in fields]
        self.primary = _primary(types)

    def _dependencies(self, name: str, found: set[str]) -> set[str]:
        for _, kind in self.types[name]:
            base = kind[:-2] if kind.endswith("[]") else kind
            if base in self.types and base not in found:
                found.add(base)
                self._dependencies(base, found)
        return found

    def _encode_type(self, name: str) -> str:
        names = [name, *sorted(self._dependencies(name, set()) - {name})]
        return "".join(f"{n}({','.join(f'{kind} {field}' for field, kind in self.types[n])})" for n in names)

    def _encoder(self, kind: str) -> Encoder:
        if kind.endswith("[]"):
            item = self._encoder(kind[:-2])
            return lambda values: self._array(item, values)
        if "[" in kind:
            raise TypeNotCompiled(f"fixed-size or nested arrays are not compiled: {kind}")
        if kind in self.types:
            return lambda value: bytes(32) if value is None else self.hash_struct(kind, value)
        if kind == "address":
            return _address
        if kind == "bool":
            return _bool
        if kind == "string":
            return _string
        if kind == "bytes":
            return _dynamic_bytes
        if match := _FIXED_BYTES.match(kind):
            return _fixed_bytes(int(match.group(1)))
        if match := _INT_TYPE.match(kind):
            return _int_encoder(match.group(1) == "", int(match.group(2) or 256))
        raise TypeNotCompiled(f"unknown type: {kind}")

    @staticmethod
    def _array(item: Encoder, values: Any) -> bytes:
        if not isinstance(values, list):
            raise ValueError(f"expected an array, got {values!r}")
        return keccak(b"".join(item(value) for value in values)) if values else EMPTY_ARRAY_HASH

    def hash_struct(self, name: str, value: Mapping[str, Any]) -> bytes:
        words = [self.type_hashes[name]]
        for field, encode in self.fields[name]:
            if field not in value:
                raise ValueError(f"missing field {field!r} of {name}")
            words.append(encode(value[field]))
        return keccak(b"".join(words))


@lru_cache(maxsize=64)
def _compiled(types_json: str) -> _Compiled:
    return _Compiled(json.loads(types_json))


# The type sets are module constants: the same object each call. Remembered by identity (the
# object is kept, so its id cannot be reused), and by text for a copy of one.
_BY_IDENTITY: dict[int, tuple[Mapping[str, Any], _Compiled]] = {}


def _compiled_for(types: Mapping[str, Any]) -> _Compiled:
    known = _BY_IDENTITY.get(id(types))
    if known is not None and known[0] is types:
        return known[1]
    compiled = _compiled(json.dumps(types, sort_keys=True))
    if len(_BY_IDENTITY) < 256:
        _BY_IDENTITY[id(types)] = (types, compiled)
    return compiled


@lru_cache(maxsize=256)
def _domain_separator(items: tuple[tuple[str, Any], ...]) -> bytes:
    domain = dict(items)
    unknown = set(domain) - {name for name, _ in DOMAIN_FIELDS}
    if unknown:
        raise ValueError(f"invalid domain keys: {sorted(unknown)}")
    fields = [{"name": name, "type": kind} for name, kind in DOMAIN_FIELDS if name in domain]
    return _compiled_for({"EIP712Domain": fields}).hash_struct("EIP712Domain", domain)


def domain_separator(domain: Mapping[str, Any]) -> bytes:
    """The domain's hash; a handful of domains repeat (one per chain and contract)."""
    try:
        return _domain_separator(tuple(domain.items()))
    except TypeError:  # an unhashable value (bytes are hashable; a list is not): not cached
        return _domain_separator.__wrapped__(tuple(domain.items()))


def primary_type(types: Mapping[str, Any]) -> str:
    """The one struct no other struct refers to, as eth_account picks it."""
    return _compiled_for(types).primary


def _primary(types: Mapping[str, Any]) -> str:
    referenced = {f["type"].removesuffix("[]") for fields in types.values() for f in fields}
    roots = [name for name in types if name not in referenced]
    if len(roots) > 1:  # a full type set lists the domain's type beside the primary one
        roots = [name for name in roots if name != "EIP712Domain"]
    if len(roots) != 1:
        raise ValueError(f"the types must have exactly one primary type, found {roots}")
    return roots[0]


def typed_data_signable(
    *, domain: Mapping[str, Any], types: Mapping[str, Any], message: Mapping[str, Any]
) -> SignableMessage:
    """What encode_typed_data(domain_data=, message_types=, message_data=) returns."""
    try:
        compiled = _compiled_for(types)
    except TypeNotCompiled:
        return encode_typed_data(domain_data=dict(domain), message_types=dict(types), message_data=dict(message))
    struct_hash = compiled.hash_struct(compiled.primary, message)
    return SignableMessage(version=b"\x01", header=domain_separator(domain), body=struct_hash)
