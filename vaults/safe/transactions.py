"""Safe transactions as owners sign them (EIP-712 SafeTx), MultiSend batches, rejections and
`execTransaction` calldata.

A Safe executes a transaction only with `threshold` signatures of current owners over its
SafeTx hash, which binds the chain, the Safe and the nonce: a signature cannot be replayed on
another chain, another Safe or another nonce, and once any transaction used a nonce (the
rejection at the same nonce included) every other signature over that nonce is dead."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account.messages import SignableMessage, encode_typed_data
from eth_typing import ChecksumAddress
from eth_utils import keccak
from web3 import Web3

from orchestrator.infra.signatures import signature_parse, signature_recover
from relayer.rpc import as_address
from vaults.safe.contracts import safe_abi

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
SENTINEL = "0x0000000000000000000000000000000000000001"  # the head of the Safe's owner list
CALL, DELEGATECALL = 0, 1
MULTI_SEND = keccak(text="multiSend(bytes)")[:4]

SAFE_TX_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [{"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
    "SafeTx": [
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "data", "type": "bytes"},
        {"name": "operation", "type": "uint8"},
        {"name": "safeTxGas", "type": "uint256"},
        {"name": "baseGas", "type": "uint256"},
        {"name": "gasPrice", "type": "uint256"},
        {"name": "gasToken", "type": "address"},
        {"name": "refundReceiver", "type": "address"},
        {"name": "nonce", "type": "uint256"},
    ],
}

_encoder = Web3()  # ABI encoding only: no provider


def safe_encoder() -> Any:
    return _encoder.eth.contract(abi=safe_abi())


def _hex_bytes(data: str) -> bytes:
    if not data.startswith(("0x", "0X")):
        raise ValueError(f"Calldata must be 0x-prefixed hex, not {data[:12]!r}.")
    return bytes.fromhex(data[2:])


@dataclass(frozen=True)
class Call:
    to: str
    value: int
    data: str  # 0x-hex


@dataclass(frozen=True)
class SafeTx:
    safe: str
    chain_id: int
    to: str
    value: int
    data: str  # 0x-hex
    operation: int  # 0 CALL, 1 DELEGATECALL
    nonce: int
    safe_tx_gas: int = 0
    base_gas: int = 0
    gas_price: int = 0
    gas_token: str = ZERO_ADDRESS
    refund_receiver: str = ZERO_ADDRESS

    def __post_init__(self) -> None:
        # One spelling of each value, so two equal transactions compare and serialise equal.
        for name in ("safe", "to", "gas_token", "refund_receiver"):
            object.__setattr__(self, name, as_address(getattr(self, name)))
        object.__setattr__(self, "data", "0x" + _hex_bytes(self.data).hex())
        if self.operation not in (CALL, DELEGATECALL):
            raise ValueError(f"A Safe operation is 0 (call) or 1 (delegatecall), not {self.operation}.")
        for name in ("chain_id", "value", "nonce", "safe_tx_gas", "base_gas", "gas_price"):
            if not 0 <= int(getattr(self, name)) < 2**256:
                raise ValueError(f"{name} is out of range: {getattr(self, name)}")

    def message(self) -> dict[str, Any]:
        """The SafeTx struct, as EIP-712 names its fields."""
        return {
            "to": self.to,
            "value": self.value,
            "data": self.data,
            "operation": self.operation,
            "safeTxGas": self.safe_tx_gas,
            "baseGas": self.base_gas,
            "gasPrice": self.gas_price,
            "gasToken": self.gas_token,
            "refundReceiver": self.refund_receiver,
            "nonce": self.nonce,
        }

    def typed_data(self) -> dict[str, Any]:
        """The full EIP-712 typed data as eth_signTypedData_v4 takes it, JSON-serialisable:
        numbers as decimal strings (a JavaScript number loses precision above 2**53)."""
        message = {k: str(v) if isinstance(v, int) else v for k, v in self.message().items()}
        return {
            "types": copy.deepcopy(SAFE_TX_TYPES),
            "primaryType": "SafeTx",
            "domain": {"chainId": str(self.chain_id), "verifyingContract": self.safe},
            "message": message,
        }

    def signable(self) -> SignableMessage:
        return encode_typed_data(full_message=self.typed_data())

    def hash(self) -> bytes:
        """The SafeTx hash (what Safe.getTransactionHash returns): what owners sign."""
        signable = self.signable()
        return keccak(b"\x19" + signable.version + signable.header + signable.body)

    def as_json(self) -> dict[str, Any]:
        """For a JSONField; `value` as a decimal string (wei overflows a JavaScript number)."""
        data = asdict(self)
        data["value"] = str(self.value)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SafeTx:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("chain_id", "value", "operation", "nonce", "safe_tx_gas", "base_gas", "gas_price"):
            if name in values:
                values[name] = int(values[name])
        return cls(**values)


def multisend_tx(*, safe: str, chain_id: int, multi_send: str, calls: list[Call], nonce: int) -> SafeTx:
    """`calls` as one DELEGATECALL to MultiSendCallOnly.multiSend: the Safe makes each CALL
    itself, in order, and all of them revert if one reverts. Each call is packed as
    uint8 operation (0) ++ address ++ uint256 value ++ uint256 length ++ data."""
    if not calls:
        raise ValueError("A MultiSend needs at least one call.")
    packed = b"".join(
        bytes([CALL])
        + bytes.fromhex(as_address(c.to)[2:])
        + c.value.to_bytes(32, "big")
        + len(_hex_bytes(c.data)).to_bytes(32, "big")
        + _hex_bytes(c.data)
        for c in calls
    )
    return SafeTx(
        safe=safe,
        chain_id=chain_id,
        to=multi_send,
        value=0,
        data="0x" + (MULTI_SEND + abi_encode(["bytes"], [packed])).hex(),
        operation=DELEGATECALL,
        nonce=nonce,
    )


def rejection_tx(*, safe: str, chain_id: int, nonce: int) -> SafeTx:
    """A transaction that does nothing at `nonce` (what Safe's own interface signs to reject):
    once executed, nothing else can use the nonce."""
    return SafeTx(safe=safe, chain_id=chain_id, to=safe, value=0, data="0x", operation=CALL, nonce=nonce)


def calls_of(tx: SafeTx, *, multi_send: str | None = None) -> list[Call]:
    """The calls a transaction makes: a MultiSend's, decoded (a DELEGATECALL of multiSend to
    `multi_send` when given), or the transaction itself. Raises ValueError for a malformed batch."""
    raw = _hex_bytes(tx.data)
    is_batch = tx.operation == DELEGATECALL and raw[:4] == MULTI_SEND
    if not is_batch or (multi_send and as_address(multi_send) != as_address(tx.to)):
        return [Call(to=tx.to, value=tx.value, data=tx.data)]
    (packed,) = abi_decode(["bytes"], raw[4:])
    calls, i = [], 0
    while i < len(packed):
        if len(packed) < i + 85 or packed[i] != CALL:
            raise ValueError(f"MultiSend data is malformed at byte {i}.")
        length = int.from_bytes(packed[i + 53 : i + 85], "big")
        if len(packed) < i + 85 + length:
            raise ValueError(f"MultiSend data is truncated at byte {i}.")
        calls.append(
            Call(
                to=as_address("0x" + packed[i + 1 : i + 21].hex()),
                value=int.from_bytes(packed[i + 21 : i + 53], "big"),
                data="0x" + packed[i + 85 : i + 85 + length].hex(),
            )
        )
        i += 85 + length
    return calls


def signature_owner(tx: SafeTx, signature: str) -> ChecksumAddress:
    """Who signed the transaction's SafeTx hash (an EIP-712 signature, v 27/28 or 0/1, low s).
    Raises MalformedSignature for a malformed, high-s or unrecoverable signature."""
    return as_address(signature_recover(tx.signable(), signature).signer)


def exec_transaction_calldata(tx: SafeTx, signatures: dict[str, str]) -> str:
    """execTransaction calldata with the signatures (owner address -> signature) concatenated
    r||s||v in ascending owner-address order, as Safe's checkNSignatures requires (it refuses
    an owner not above the previous one: GS026). Raises MalformedSignature."""
    ordered = sorted(signatures.items(), key=lambda kv: int(as_address(kv[0]), 16))
    packed = b"".join(signature_parse(sig).to_bytes() for _, sig in ordered)
    return str(
        safe_encoder().encode_abi(
            "execTransaction",
            args=[
                tx.to,
                tx.value,
                _hex_bytes(tx.data),
                tx.operation,
                tx.safe_tx_gas,
                tx.base_gas,
                tx.gas_price,
                tx.gas_token,
                tx.refund_receiver,
                packed,
            ],
        )
    )
