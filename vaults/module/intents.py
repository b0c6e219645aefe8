"""The ExecutionIntent the operator signs and the module checks: its EIP-712 typed data, its
signature (an eth_account key, or a key of the project's key manager) and the executeIntent
calldata anyone may submit.

The struct is flat: ExecutionIntent(bytes32 callsHash, uint256 nonce, uint256 deadline,
bytes32 policyHash), with callsHash = keccak256(abi.encode(calls)) over (address,uint256,bytes)[].
The domain is ("VaultPolicyModule", "1", chainId, the module), so a signature is good for one
module on one chain; the nonce makes it good once; policyHash makes it good only under the
policy it was made for."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import SignableMessage
from eth_utils import keccak
from web3 import Web3

from orchestrator.infra.eip712 import typed_data_signable
from relayer.keys import key_manager
from relayer.models import SigningKey
from relayer.rpc import as_address
from vaults.module.contract import NAME, VERSION, module_abi
from vaults.safe import Call

CALL_TUPLES = "(address,uint256,bytes)[]"
INTENT_TYPES: dict[str, list[dict[str, str]]] = {
    "ExecutionIntent": [
        {"name": "callsHash", "type": "bytes32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
        {"name": "policyHash", "type": "bytes32"},
    ],
}
EIP712_DOMAIN = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_encoder = Web3()  # ABI encoding only: no provider


def _data(call: Call) -> bytes:
    if not call.data.startswith(("0x", "0X")):
        raise ValueError(f"Calldata must be 0x-prefixed hex, not {call.data[:12]!r}.")
    return bytes.fromhex(call.data[2:])


def _tuples(calls: list[Call]) -> list[tuple[str, int, bytes]]:
    return [(as_address(c.to), int(c.value), _data(c)) for c in calls]


def calls_hash(calls: list[Call]) -> bytes:
    """keccak256(abi.encode(calls)), as the module computes it."""
    return keccak(abi_encode([CALL_TUPLES], [_tuples(calls)]))


@dataclass(frozen=True)
class ModuleIntent:
    module: str
    chain_id: int
    calls: list[Call]
    nonce: int
    deadline: int  # unix seconds; the module refuses it once block.timestamp is past it
    policy_hash: bytes  # the policy committed on chain when it is executed

    def __post_init__(self) -> None:
        object.__setattr__(self, "module", as_address(self.module))
        if not self.calls:
            raise ValueError("An intent needs at least one call.")
        if len(self.policy_hash) != 32:
            raise ValueError(f"A policy hash is 32 bytes, not {len(self.policy_hash)}.")

    def domain(self) -> dict[str, Any]:
        return {"name": NAME, "version": VERSION, "chainId": self.chain_id, "verifyingContract": self.module}

    def message(self) -> dict[str, Any]:
        return {
            "callsHash": calls_hash(self.calls),
            "nonce": self.nonce,
            "deadline": self.deadline,
            "policyHash": self.policy_hash,
        }

    def typed_data(self) -> dict[str, Any]:
        """The full typed data as eth_signTypedData_v4 takes it, JSON-serialisable (numbers as
        decimal strings, bytes32 as 0x-hex)."""
        message = {k: "0x" + v.hex() if isinstance(v, bytes) else str(v) for k, v in self.message().items()}
        domain = {**self.domain(), "chainId": str(self.chain_id)}
        types = {"EIP712Domain": copy.deepcopy(EIP712_DOMAIN), **copy.deepcopy(INTENT_TYPES)}
        return {"types": types, "primaryType": "ExecutionIntent", "domain": domain, "message": message}

    def signable(self) -> SignableMessage:
        return typed_data_signable(domain=self.domain(), types=INTENT_TYPES, message=self.message())

    def digest(self) -> bytes:
        """What the module's intentDigest returns for this intent."""
        signable = self.signable()
        return keccak(b"\x19" + signable.version + signable.header + signable.body)


def intent_sign(intent: ModuleIntent, private_key: Any) -> str:
    """The operator's signature (0x-hex r||s||v) with an eth_account key (tests, tools)."""
    signed = Account.sign_message(intent.signable(), private_key)
    return "0x" + bytes(signed.signature).hex()


def intent_sign_with_key(intent: ModuleIntent, *, key: SigningKey) -> str:
    """The operator's signature with a key of the project's key manager."""
    return key_manager().sign_typed_data(
        key=key, domain=intent.domain(), types=copy.deepcopy(INTENT_TYPES), message=intent.message()
    )


def execute_intent_calldata(intent: ModuleIntent, signature: str) -> str:
    """executeIntent(calls, nonce, deadline, signature) calldata, to send to the module from any key."""
    contract: Any = _encoder.eth.contract(abi=module_abi())
    raw_signature = bytes.fromhex(signature.removeprefix("0x"))
    return str(
        contract.encode_abi("executeIntent", args=[_tuples(intent.calls), intent.nonce, intent.deadline, raw_signature])
    )
