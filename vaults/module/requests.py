"""Automation requests through the module: the executor's ExecutionRequest as the module checks
it (requestDigest), the validator's countersignature (Validation, the module's EIP-712 domain)
and the executeRequest calldata anyone may submit.

The executor signs the automation API's ExecutionRequest (docs/api.md): domain ("Brahma Builder
Kit", "1", chainId) with no verifying contract, the Safe as subaccount. The module recomputes that
digest on chain, so one signature serves both the automation API and the module. The validator
then signs Validation(requestDigest, policyHash, expiry) under the module's own domain: good for
that request, on that module, under the committed policy, until `expiry`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak
from web3 import Web3

from relayer.keys import key_manager
from relayer.models import SigningKey
from relayer.rpc import as_address
from vaults.module.contract import NAME, VERSION, module_abi
from vaults.module.intents import EIP712_DOMAIN

# The automation API's ExecutionRequest. It must match docs/api.md ("ExecutionRequest") and
# orchestrator.automations.typed_data (which vaults may not import): executors sign it there,
# the module checks it here, and a difference in one field would make every request unknown.
REQUEST_DOMAIN: dict[str, str] = {"name": "Brahma Builder Kit", "version": "1"}
REQUEST_TYPES: dict[str, list[dict[str, str]]] = {
    "ExecutionRequest": [
        {"name": "requestID", "type": "string"},
        {"name": "subaccount", "type": "address"},
        {"name": "callType", "type": "uint8"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "data", "type": "bytes"},
    ]
}
VALIDATION_TYPES: dict[str, list[dict[str, str]]] = {
    "Validation": [
        {"name": "requestDigest", "type": "bytes32"},
        {"name": "policyHash", "type": "bytes32"},
        {"name": "expiry", "type": "uint256"},
    ]
}
_encoder = Web3()  # ABI encoding only: no provider


@dataclass(frozen=True)
class ModuleRequest:
    """One automation task for the module: call `to` with `value` and `data` from `subaccount`
    (the module's Safe), call_type 0 (CALL; the module refuses 1, DELEGATECALL)."""

    module: str
    chain_id: int
    request_id: str
    subaccount: str
    call_type: int
    to: str
    value: int
    data: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "module", as_address(self.module))
        object.__setattr__(self, "subaccount", as_address(self.subaccount))
        object.__setattr__(self, "to", as_address(self.to))
        if not 0 <= self.call_type < 256:
            raise ValueError(f"A callType is a uint8, not {self.call_type}.")

    def message(self) -> dict[str, Any]:
        return {
            "requestID": self.request_id,
            "subaccount": self.subaccount,
            "callType": self.call_type,
            "to": self.to,
            "value": self.value,
            "data": self.data,
        }

    def signable(self) -> SignableMessage:
        domain = {**REQUEST_DOMAIN, "chainId": self.chain_id}
        return encode_typed_data(domain_data=domain, message_types=REQUEST_TYPES, message_data=self.message())

    def typed_data(self) -> dict[str, Any]:
        """The executor's typed data as eth_signTypedData_v4 takes it, JSON-serialisable."""
        message = {**self.message(), "value": str(self.value), "data": "0x" + self.data.hex()}
        domain = {**REQUEST_DOMAIN, "chainId": str(self.chain_id)}
        types = {"EIP712Domain": copy.deepcopy(EIP712_DOMAIN[:3]), **copy.deepcopy(REQUEST_TYPES)}
        return {"types": types, "primaryType": "ExecutionRequest", "domain": domain, "message": message}

    def as_tuple(self) -> tuple[str, str, int, str, int, bytes]:
        """The contract's Request struct."""
        return (self.request_id, self.subaccount, self.call_type, self.to, self.value, self.data)


def _digest(signable: SignableMessage) -> bytes:
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def request_digest(req: ModuleRequest) -> bytes:
    """The executor's EIP-712 digest of the request: what the module's requestDigest returns."""
    return _digest(req.signable())


def request_sign(req: ModuleRequest, private_key: Any) -> str:
    """An executor's signature of the request with an eth_account key (tests, tools)."""
    return "0x" + bytes(Account.sign_message(req.signable(), private_key).signature).hex()


def _validation_domain(req: ModuleRequest) -> dict[str, Any]:
    return {"name": NAME, "version": VERSION, "chainId": req.chain_id, "verifyingContract": req.module}


def _validation_message(req: ModuleRequest, policy_hash: bytes, expiry: int) -> dict[str, Any]:
    if len(policy_hash) != 32:
        raise ValueError(f"A policy hash is 32 bytes, not {len(policy_hash)}.")
    return {"requestDigest": request_digest(req), "policyHash": policy_hash, "expiry": expiry}


def validation_signable(req: ModuleRequest, policy_hash: bytes, expiry: int) -> SignableMessage:
    return encode_typed_data(
        domain_data=_validation_domain(req),
        message_types=VALIDATION_TYPES,
        message_data=_validation_message(req, policy_hash, expiry),
    )


def validation_typed_data(req: ModuleRequest, policy_hash: bytes, expiry: int) -> dict[str, Any]:
    """The validator's typed data as eth_signTypedData_v4 takes it, JSON-serialisable."""
    message = _validation_message(req, policy_hash, expiry)
    return {
        "types": {"EIP712Domain": copy.deepcopy(EIP712_DOMAIN), **copy.deepcopy(VALIDATION_TYPES)},
        "primaryType": "Validation",
        "domain": {**_validation_domain(req), "chainId": str(req.chain_id)},
        "message": {**{k: "0x" + v.hex() for k, v in message.items() if isinstance(v, bytes)}, "expiry": str(expiry)},
    }


def validation_digest(req: ModuleRequest, policy_hash: bytes, expiry: int) -> bytes:
    """What the module's validationDigest(requestDigest(req), expiry) returns under `policy_hash`."""
    return _digest(validation_signable(req, policy_hash, expiry))


def validation_sign(req: ModuleRequest, policy_hash: bytes, expiry: int, private_key: Any) -> str:
    """The validator's countersignature with an eth_account key (tests, tools)."""
    signed = Account.sign_message(validation_signable(req, policy_hash, expiry), private_key)
    return "0x" + bytes(signed.signature).hex()


def validation_sign_with_key(req: ModuleRequest, policy_hash: bytes, expiry: int, *, key: SigningKey) -> str:
    """The validator's countersignature with a key of the project's key manager."""
    return key_manager().sign_typed_data(
        key=key,
        domain=_validation_domain(req),
        types=copy.deepcopy(VALIDATION_TYPES),
        message=_validation_message(req, policy_hash, expiry),
    )


def request_used(w3: Web3, *, module: str, request_id: str) -> bool:
    """Whether the module has run a request with this requestID (requestUsed)."""
    contract: Any = w3.eth.contract(address=as_address(module), abi=module_abi())
    return bool(contract.functions.requestUsed(keccak(text=request_id)).call())


def executor_registered(w3: Web3, *, module: str, executor: str) -> bool:
    """Whether the Safe registered `executor` with its module (executors)."""
    contract: Any = w3.eth.contract(address=as_address(module), abi=module_abi())
    return bool(contract.functions.executors(as_address(executor)).call())


def execute_request_calldata(req: ModuleRequest, executor_signature: str, expiry: int, validator_signature: str) -> str:
    """executeRequest(request, executorSignature, expiry, validatorSignature) calldata, to send
    to the module from any key."""
    contract: Any = _encoder.eth.contract(abi=module_abi())
    args = [
        req.as_tuple(),
        bytes.fromhex(executor_signature.removeprefix("0x")),
        expiry,
        bytes.fromhex(validator_signature.removeprefix("0x")),
    ]
    return str(contract.encode_abi("executeRequest", args=args))
