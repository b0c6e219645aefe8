"""The VaultPolicyModule contract of one Safe: deploying it (development), the Safe's own calls
that enable it and set its policy, and its state read back.

Every setter is `onlySafe` on chain, so what this module builds for them are `Call`s from the
Safe (to itself for enableModule, to the module for the rest): owners sign them as a Safe
transaction, a MultiSend when there are several (vaults.safe.multisend_tx)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import Web3

from relayer.rpc import as_address
from vaults import onchain
from vaults.safe import Call
from vaults.safe.transactions import safe_encoder

NAME, VERSION = "VaultPolicyModule", "1"  # the EIP-712 domain the contract's constructor sets
RECEIPT_TIMEOUT = 30.0
_encoder = Web3()  # ABI encoding only: no provider


class ModuleError(RuntimeError):
    """Deploying or reading the module failed."""


@dataclass(frozen=True)
class AllowedCall:
    """One (target, selector) pair of a committed policy."""

    to: str
    selector: bytes  # 4 bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", as_address(self.to))
        if len(self.selector) != 4:
            raise ValueError(f"A selector is 4 bytes, not {len(self.selector)}.")


@dataclass(frozen=True)
class ModuleState:
    safe: ChecksumAddress
    operator: ChecksumAddress
    nonce: int  # the nonce the next intent must carry
    policy_hash: bytes
    allowed: list[AllowedCall]


def module_abi() -> list[dict[str, Any]]:
    return onchain.compiled()["VaultPolicyModule"].abi


def _module_encoder() -> Any:
    return _encoder.eth.contract(abi=module_abi())


def module_deploy_dev(w3: Web3, *, deployer: str, safe: str, operator: str) -> ChecksumAddress:
    """Deploys a module for `safe` with `operator` from `deployer`, an unlocked node account
    (development chains), and waits for it. Raises ModuleError if it fails."""
    contract = onchain.compiled()["VaultPolicyModule"]
    factory = w3.eth.contract(abi=contract.abi, bytecode=contract.bytecode)
    tx_hash = factory.constructor(as_address(safe), as_address(operator)).transact({"from": as_address(deployer)})
    receipt = w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=RECEIPT_TIMEOUT)
    address = receipt.get("contractAddress")
    if receipt["status"] != 1 or address is None:
        raise ModuleError(f"Deploying the VaultPolicyModule for {safe} failed (tx {HexBytes(tx_hash).to_0x_hex()}).")
    return as_address(address)


def enable_module_call(*, safe: str, module: str) -> Call:
    """Safe.enableModule(module), a call from the Safe to itself (Safe refuses it otherwise: GS031)."""
    return Call(to=as_address(safe), value=0, data=str(safe_encoder().encode_abi("enableModule", args=[module])))


def commit_policy_call(*, module: str, policy_hash: bytes, allowed: list[AllowedCall]) -> Call:
    """commitPolicy(policyHash, targets, selectors): replaces the module's policy."""
    if len(policy_hash) != 32:
        raise ValueError(f"A policy hash is 32 bytes, not {len(policy_hash)}.")
    data = _module_encoder().encode_abi(
        "commitPolicy", args=[policy_hash, [a.to for a in allowed], [a.selector for a in allowed]]
    )
    return Call(to=as_address(module), value=0, data=str(data))


def set_spending_limit_call(*, module: str, token: str, amount: int, period_seconds: int) -> Call:
    """setSpendingLimit(token, amount, periodSeconds); a period of 0 removes the limit."""
    data = _module_encoder().encode_abi("setSpendingLimit", args=[as_address(token), amount, period_seconds])
    return Call(to=as_address(module), value=0, data=str(data))


def set_operator_call(*, module: str, operator: str) -> Call:
    data = _module_encoder().encode_abi("setOperator", args=[as_address(operator)])
    return Call(to=as_address(module), value=0, data=str(data))


def module_state(w3: Web3, module: str) -> ModuleState:
    """The module's Safe, operator, next nonce, policy hash and allowed pairs (five eth_calls)."""
    contract: Any = w3.eth.contract(address=as_address(module), abi=module_abi())
    if not w3.eth.get_code(as_address(module)):
        raise ModuleError(f"There is no contract at {module}.")
    targets, selectors = contract.functions.allowedCalls().call()
    return ModuleState(
        safe=as_address(contract.functions.safe().call()),
        operator=as_address(contract.functions.operator().call()),
        nonce=int(contract.functions.nonce().call()),
        policy_hash=bytes(contract.functions.policyHash().call()),
        allowed=[AllowedCall(to=t, selector=bytes(s)) for t, s in zip(targets, selectors, strict=True)],
    )


def module_enabled(w3: Web3, *, safe: str, module: str) -> bool:
    """Whether the Safe has the module enabled (Safe.isModuleEnabled)."""
    data = HexStr(str(safe_encoder().encode_abi("isModuleEnabled", args=[as_address(module)])))
    raw = w3.eth.call({"to": as_address(safe), "data": data})
    return int.from_bytes(bytes(raw)[:32], "big") == 1
