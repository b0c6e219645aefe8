"""The module's checks, made off chain before anything is sent: `intent_refusal` and
`request_refusal` answer with the custom error (name and arguments) executeIntent or
executeRequest would revert with, checked in the contract's order, or None when the module
would run it. So the orchestrator refuses with the rule the chain would name, without paying for
the revert.

They mirror vaults/contracts/VaultPolicyModule.sol and must change with it: executeIntent
(nonce, deadline, operator signature, then _authorize per call), executeRequest (callType,
subaccount, expiry, replay, executor, validator, then _authorize), _authorize (pair, argument
rule, ETH value, token amount) and _count (windows, several calls against one limit).

Signers are recovered as the module recovers them (intent_signer, request_signers: over the
module's chain, address and committed policy, OpenZeppelin's rules for a signature). What only
the chain knows exactly is the block's timestamp: `now` is the caller's guess of it."""

from __future__ import annotations

import dataclasses

from eth_keys import keys

from relayer.rpc import as_address
from vaults.module.contract import Limit, ModuleState
from vaults.module.errors import ModuleRevert
from vaults.module.intents import ModuleIntent
from vaults.module.requests import ModuleRequest, request_digest, validation_digest

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
# Arguments as module_revert decodes them from the revert data (eth_abi: addresses in lower case,
# bytes4 as bytes), so a refusal made here compares equal to the one the chain gives.
MAX_UINT256 = 2**256 - 1
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
APPROVE = bytes.fromhex("095ea7b3")  # approve(address,uint256)
TRANSFER = bytes.fromhex("a9059cbb")  # transfer(address,uint256)
TRANSFER_FROM = bytes.fromhex("23b872dd")  # transferFrom(address,address,uint256)
INCREASE_ALLOWANCE = bytes.fromhex("39509351")  # increaseAllowance(address,uint256)


def recover(digest: bytes, signature: str | bytes) -> str | None:
    """Who signed `digest`, as OpenZeppelin's ECDSA.tryRecover reads it: 65 bytes r||s||v, v 27
    or 28, s in the lower half of the curve order; None for anything it refuses."""
    raw = signature if isinstance(signature, bytes) else bytes.fromhex(signature.removeprefix("0x"))
    if len(raw) != 65 or raw[64] not in (27, 28) or int.from_bytes(raw[32:64], "big") > SECP256K1_HALF_N:
        return None
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")
    try:
        public = keys.Signature(vrs=(raw[64] - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except Exception:  # r or s out of range, no point on the curve: ecrecover gives address(0)
        return None
    return as_address(public.to_checksum_address())


def _selector(data: bytes) -> bytes:
    return data[:4] if len(data) >= 4 else b"\x00" * 4


def _word(data: bytes, j: int) -> int:
    """Argument word j; too short data reads as the largest amount, as the contract reads it."""
    if len(data) < 4 + 32 * (j + 1):
        return MAX_UINT256
    return int.from_bytes(data[4 + 32 * j : 36 + 32 * j], "big")


class _Spending:
    """The limits as one transaction sees them: each count leaves less for the next."""

    def __init__(self, limits: dict[str, Limit], now: int) -> None:
        self.remaining = {
            as_address(token): limit.remaining(now) for token, limit in limits.items() if limit.period != 0
        }

    def count(self, token: str, requested: int) -> ModuleRevert | None:
        token = as_address(token)
        if token not in self.remaining:
            return None
        remaining = self.remaining[token]
        if requested > remaining:
            return ModuleRevert(
                "SpendingLimitExceeded", {"token": token.lower(), "requested": requested, "remaining": remaining}
            )
        self.remaining[token] = remaining - requested
        return None


def _authorize(
    state: ModuleState, index: int, to: str, value: int, data: bytes, spending: _Spending
) -> ModuleRevert | None:
    """_authorize: the pair, its argument rule, the ETH value, then the token amount."""
    selector = _selector(data)
    rule = state.rule_for(to, selector)
    if rule is None:
        return ModuleRevert("TargetNotAllowed", {"to": to.lower(), "selector": selector})
    word = rule.arguments_allowed(data, safe=state.safe, targets=state.targets)
    if word is not None:
        return ModuleRevert("ArgumentNotAllowed", {"index": index, "word": word})
    if value > 0 and (refused := spending.count(ZERO_ADDRESS, value)):
        return refused
    if selector in (APPROVE, TRANSFER, INCREASE_ALLOWANCE):
        return spending.count(to, _word(data, 1))
    if selector == TRANSFER_FROM:
        return spending.count(to, _word(data, 2))
    return None


def _calldata(hex_data: str) -> bytes:
    return bytes.fromhex(hex_data.removeprefix("0x").removeprefix("0X"))


def intent_refusal(
    state: ModuleState, intent: ModuleIntent, *, signer: str | None, now: int, limits: dict[str, Limit]
) -> ModuleRevert | None:
    """What executeIntent would revert with at block time `now`, or None. `signer` is whom the module
    recovers from the signature (intent_signer; None when nobody); `limits` the
    module's spending limits by token (address(0) for ETH), module_limit for each token called."""
    if intent.nonce != state.nonce:
        return ModuleRevert("WrongNonce", {"expected": state.nonce, "given": intent.nonce})
    if now > intent.deadline:
        return ModuleRevert("Expired", {"deadline": intent.deadline, "nowTs": now})
    # The module recovers over its own address, chain and committed policy: a signature made
    # for any other recovers someone else, never the operator.
    same_domain = (state.module in (None, intent.module)) and (state.chain_id in (None, intent.chain_id))
    if not same_domain or intent.policy_hash != state.policy_hash or signer is None:
        return ModuleRevert("BadSignature", {})
    if as_address(signer) != state.operator:
        return ModuleRevert("BadSignature", {})
    spending = _Spending(limits, now)
    for index, call in enumerate(intent.calls):
        refused = _authorize(state, index, call.to, int(call.value), _calldata(call.data), spending)
        if refused is not None:
            return refused
    return None


def request_refusal(
    state: ModuleState,
    req: ModuleRequest,
    *,
    executor: str | None,
    registered_executors: set[str],
    validator_signer: str | None,
    expiry: int,
    now: int,
    used: bool,
    limits: dict[str, Limit],
) -> ModuleRevert | None:
    """What executeRequest would revert with at block time `now`, or None. `executor` and
    `validator_signer` are whom the module recovers from the two signatures (request_signers;
    None when nobody), `used` whether the module has seen req.request_id (requestUsed)."""
    if req.call_type != 0:
        return ModuleRevert("DelegateCallNotAllowed", {})
    if req.subaccount != state.safe:
        return ModuleRevert("WrongSubaccount", {"subaccount": req.subaccount.lower()})
    if now > expiry:
        return ModuleRevert("ValidationExpired", {"expiry": expiry, "nowTs": now})
    if used:
        return ModuleRevert("RequestReplayed", {"requestID": req.request_id})
    registered = {as_address(e) for e in registered_executors}
    # Signed for another chain, the module recovers another address: unknown all the same.
    if state.chain_id not in (None, req.chain_id) or executor is None or as_address(executor) not in registered:
        return ModuleRevert("UnknownExecutor", {"signer": (executor or ZERO_ADDRESS).lower()})
    if (
        state.module not in (None, req.module)
        or state.validator is None
        or validator_signer is None
        or as_address(validator_signer) != state.validator
    ):
        return ModuleRevert("BadValidatorSignature", {})
    return _authorize(state, 0, req.to, req.value, req.data, _Spending(limits, now))


def _as_the_module_sees(state: ModuleState, req: ModuleRequest) -> ModuleRequest:
    """The request on the module's own chain and address, the only ones it hashes with."""
    return dataclasses.replace(req, module=state.module or req.module, chain_id=state.chain_id or req.chain_id)


def request_signers(
    state: ModuleState, req: ModuleRequest, *, executor_signature: str, expiry: int, validator_signature: str
) -> tuple[str | None, str | None]:
    """(executor, validator): whom the module recovers from the request's signature and from the
    countersignature (under its chain, its address and the committed policy hash, whatever the
    request says), None for a signature it refuses. So a request signed for another chain names
    the same stranger in UnknownExecutor here as on chain."""
    seen = _as_the_module_sees(state, req)
    executor = recover(request_digest(seen), executor_signature)
    validator = recover(validation_digest(seen, state.policy_hash, expiry), validator_signature)
    return executor, validator


def intent_signer(state: ModuleState, intent: ModuleIntent, signature: str) -> str | None:
    """Whom the module recovers from the intent's signature: over its own chain, address and
    committed policy hash, whatever the intent says."""
    seen = dataclasses.replace(
        intent,
        module=state.module or intent.module,
        chain_id=state.chain_id or intent.chain_id,
        policy_hash=state.policy_hash,
    )
    return recover(seen.digest(), signature)
