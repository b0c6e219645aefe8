"""The VaultPolicyModule contract of one Safe: deploying it (development), the Safe's own calls
that enable it and set its policy, and its state read back.

Every setter is `onlySafe` on chain, so what this module builds for them are `Call`s from the
Safe (to itself for enableModule, to the module for the rest): owners sign them as a Safe
transaction, a MultiSend when there are several (vaults.safe.multisend_tx)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_typing import ChecksumAddress, HexStr
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.types import RPCEndpoint

from relayer.rpc import as_address
from vaults import onchain
from vaults.safe import Call
from vaults.safe.transactions import safe_encoder

NAME, VERSION = "VaultPolicyModule", "1"  # the EIP-712 domain the contract's constructor sets
RECEIPT_TIMEOUT = 30.0
_encoder = Web3()  # ABI encoding only: no provider


class ModuleError(RuntimeError):
    """Deploying or reading the module failed."""


MAX_WORDS = 16  # argument words an argument rule can constrain


@dataclass(frozen=True)
class AllowedCall:
    """One (target, selector) pair of a committed policy, with its argument rule: the argument
    words (0-based, 32 bytes each after the selector) that must be the Safe's address, and those
    that must be one of the policy's targets. deposit(assets, receiver) with safe_words=(1,)
    allows depositing only for the Safe; approve(spender, amount) with target_words=(0,) only
    to a protocol the policy allows."""

    to: str
    selector: bytes  # 4 bytes
    safe_words: tuple[int, ...] = ()
    target_words: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", as_address(self.to))
        if len(self.selector) != 4:
            raise ValueError(f"A selector is 4 bytes, not {len(self.selector)}.")
        for word in (*self.safe_words, *self.target_words):
            if not 0 <= word < MAX_WORDS:
                raise ValueError(f"An argument rule covers words 0-{MAX_WORDS - 1}, not {word}.")

    @property
    def arg_rule(self) -> int:
        """The bitmask the contract stores: bit j for a Safe word, bit 16 + j for a target word."""
        return sum(1 << j for j in set(self.safe_words)) | sum(1 << (MAX_WORDS + j) for j in set(self.target_words))

    @classmethod
    def of_rule(cls, to: str, selector: bytes, rule: int) -> AllowedCall:
        return cls(
            to=to,
            selector=selector,
            safe_words=tuple(j for j in range(MAX_WORDS) if rule & (1 << j)),
            target_words=tuple(j for j in range(MAX_WORDS) if rule & (1 << (MAX_WORDS + j))),
        )

    def arguments_allowed(self, data: bytes, *, safe: str, targets: set[str]) -> int | None:
        """The first argument word of `data` (selector included) that breaks the rule, as the
        contract checks it, or None when all hold."""
        for j in range(MAX_WORDS):
            must_be_safe, must_be_target = j in self.safe_words, j in self.target_words
            if not (must_be_safe or must_be_target):
                continue
            raw = data[4 + 32 * j : 36 + 32 * j]
            if len(raw) < 32 or int.from_bytes(raw, "big") >> 160:
                return j
            value = as_address("0x" + raw[12:].hex())
            if (must_be_safe and value != as_address(safe)) or (must_be_target and value not in targets):
                return j
        return None


@dataclass(frozen=True)
class Limit:
    """A spending limit as the module holds it: `spent` counts from `window_start`."""

    amount: int
    spent: int
    period: int
    window_start: int

    def remaining(self, now: int) -> int:
        """What the limit still allows at block time `now` (a passed window starts afresh)."""
        if now >= self.window_start + self.period:
            return self.amount
        return max(self.amount - self.spent, 0)


@dataclass(frozen=True)
class ModuleState:
    safe: ChecksumAddress
    operator: ChecksumAddress
    nonce: int  # the nonce the next intent must carry
    policy_hash: bytes
    allowed: list[AllowedCall]
    validator: ChecksumAddress | None = None
    module: ChecksumAddress | None = None  # the module read (isAllowed refuses it as a target)
    chain_id: int | None = None  # the chain it was read on (signatures are for one chain)

    def rule_for(self, to: str, selector: bytes) -> AllowedCall | None:
        """The committed pair for this call, or None (never the Safe or the module itself)."""
        if as_address(to) in (self.safe, self.module):
            return None
        return next((a for a in self.allowed if a.to == as_address(to) and a.selector == selector), None)

    @property
    def targets(self) -> set[str]:
        return {a.to for a in self.allowed}


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
    """commitPolicy(policyHash, targets, selectors, argRules): replaces the module's policy."""
    if len(policy_hash) != 32:
        raise ValueError(f"A policy hash is 32 bytes, not {len(policy_hash)}.")
    args = [policy_hash, [a.to for a in allowed], [a.selector for a in allowed], [a.arg_rule for a in allowed]]
    return Call(to=as_address(module), value=0, data=str(_module_encoder().encode_abi("commitPolicy", args=args)))


def set_spending_limit_call(*, module: str, token: str, amount: int, period_seconds: int) -> Call:
    """setSpendingLimit(token, amount, periodSeconds); a period of 0 removes the limit."""
    data = _module_encoder().encode_abi("setSpendingLimit", args=[as_address(token), amount, period_seconds])
    return Call(to=as_address(module), value=0, data=str(data))


def set_operator_call(*, module: str, operator: str) -> Call:
    data = _module_encoder().encode_abi("setOperator", args=[as_address(operator)])
    return Call(to=as_address(module), value=0, data=str(data))


def set_validator_call(*, module: str, validator: str) -> Call:
    data = _module_encoder().encode_abi("setValidator", args=[as_address(validator)])
    return Call(to=as_address(module), value=0, data=str(data))


def set_executor_call(*, module: str, executor: str, allowed: bool = True) -> Call:
    """setExecutor(executor, allowed): the automation executors whose requests the Safe accepts."""
    data = _module_encoder().encode_abi("setExecutor", args=[as_address(executor), allowed])
    return Call(to=as_address(module), value=0, data=str(data))


def module_state(w3: Web3, module: str) -> ModuleState:
    """The module's Safe, operator, validator, next nonce, policy hash and allowed pairs, and the
    chain's id, in one JSON-RPC batch (so, in practice, of one block). Raises ModuleError when no
    module answers."""
    return module_snapshot(w3, module).state


_STATE_READS = [
    "0x" + keccak(text=f"{name}()")[:4].hex()
    for name in ("safe", "operator", "validator", "nonce", "policyHash", "allowedCalls")
]
_SPENDING_LIMITS = keccak(text="spendingLimits(address)")[:4]


@dataclass(frozen=True)
class ModuleSnapshot:
    state: ModuleState
    limits: dict[str, Limit]  # by token asked for, only those with a limit
    block_time: int  # the latest block's timestamp, what the module compares deadlines with


def module_snapshot(w3: Web3, module: str, *, tokens: tuple[str, ...] = ()) -> ModuleSnapshot:
    """module_state, the spending limits of `tokens` and the latest block's time, all in one
    JSON-RPC batch: what an off-chain check of an intent needs, read in one round trip. Raises
    ModuleError when no module answers."""
    address = as_address(module)
    # Hand-encoded: a web3 contract object costs milliseconds per call, and Flow A reads this
    # on every rebalance of a module vault. Selectors are fixed by the ABI.
    limits = ["0x" + (_SPENDING_LIMITS + abi_encode(["address"], [as_address(t)])).hex() for t in tokens]
    reads = [*_STATE_READS, *limits]
    provider: Any = w3.provider  # every HTTP provider batches; the base type does not say so
    answers = provider.make_batch_request(
        [(RPCEndpoint("eth_call"), [{"to": address, "data": data}, "latest"]) for data in reads]
        + [(RPCEndpoint("eth_chainId"), []), (RPCEndpoint("eth_getBlockByNumber"), ["latest", False])]
    )
    if not isinstance(answers, list) or any("error" in a for a in answers):
        raise ModuleError(f"Reading the module {address} failed: {answers}")
    *calls, chain, block = (a["result"] for a in sorted(answers, key=lambda a: int(a["id"])))
    raw = [bytes.fromhex(str(result).removeprefix("0x")) for result in calls]
    if any(len(r) < 32 for r in raw):
        raise ModuleError(f"There is no VaultPolicyModule at {address}.")
    safe, operator, validator = (as_address("0x" + r[12:32].hex()) for r in raw[:3])
    targets, selectors, rules = abi_decode(["address[]", "bytes4[]", "uint256[]"], raw[5])
    state = ModuleState(
        safe=safe,
        operator=operator,
        nonce=int.from_bytes(raw[3][:32], "big"),
        policy_hash=raw[4][:32],
        allowed=[
            AllowedCall.of_rule(t, bytes(sel), int(r)) for t, sel, r in zip(targets, selectors, rules, strict=True)
        ],
        validator=validator if int(validator, 16) else None,
        module=address,
        chain_id=int(str(chain), 16),
    )
    found: dict[str, Limit] = {}
    for token, data in zip(tokens, raw[6:], strict=True):
        amount, spent, period, window_start = abi_decode(["uint256", "uint256", "uint64", "uint64"], data)
        if period:
            found[as_address(token)] = Limit(int(amount), int(spent), int(period), int(window_start))
    return ModuleSnapshot(state=state, limits=found, block_time=int(str(block["timestamp"]), 16))


def module_limit(w3: Web3, *, module: str, token: str) -> Limit | None:
    """The module's spending limit on `token` (address(0): ETH), None when it has none."""
    contract: Any = w3.eth.contract(address=as_address(module), abi=module_abi())
    amount, spent, period, window_start = contract.functions.spendingLimits(as_address(token)).call()
    return Limit(int(amount), int(spent), int(period), int(window_start)) if period else None


def module_enabled(w3: Web3, *, safe: str, module: str) -> bool:
    """Whether the Safe has the module enabled (Safe.isModuleEnabled)."""
    data = HexStr(str(safe_encoder().encode_abi("isModuleEnabled", args=[as_address(module)])))
    raw = w3.eth.call({"to": as_address(safe), "data": data})
    return int.from_bytes(bytes(raw)[:32], "big") == 1
