"""The automation policy: what an executor's task may do before anything reaches the relayer.

- callType 1 (DELEGATECALL) is refused: tasks are relayed as plain calls from the config's
  relayer key, and a delegatecall would run foreign code with the caller's storage.
- If the config lists allowed targets, `to` must be one of them.
- The subscription's tokenLimits bound what one task may move, in whole-token units (the
  "0.0008" of an 18-decimal token): an ERC-20 transfer, transferFrom or approve on a listed token is checked
  against limit * 10**decimals (decimals read from the token); native value is checked
  against the limit of the zero address or 0xEeee…EEeE, when one is listed. Tokens that are
  not listed are not limited.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from eth_abi import decode
from eth_typing import HexStr
from eth_utils import to_checksum_address
from web3 import Web3

from orchestrator.automations.models import Subscription
from orchestrator.automations.services.answers import ReviewedTask

NATIVE = {"0x0000000000000000000000000000000000000000", "0xEeeeeEeeeEeEeeEeEeEeeEEEeeeeEeeeeeeeEEeE"}
# selector -> index of the amount among the decoded arguments
AMOUNT_CALLS = {
    "0xa9059cbb": (["address", "uint256"], 1),  # transfer(to, amount)
    "0x095ea7b3": (["address", "uint256"], 1),  # approve(spender, amount)
    "0x23b872dd": (["address", "address", "uint256"], 2),  # transferFrom(from, to, amount)
}
DECIMALS = "0x313ce567"


@dataclass(frozen=True)
class Violation:
    code: str
    message: str


def task_policy_check(*, subscription: Subscription, task: ReviewedTask, w3: Web3 | None) -> list[Violation]:
    """Every rule the task breaks (empty when it may be relayed). Raises what the RPC raises
    when a token's decimals cannot be read (the caller retries)."""
    violations = []
    if task["callType"] != 0:
        violations.append(Violation("delegatecall_refused", "callType 1 (DELEGATECALL) is not allowed"))
    allowed = {to_checksum_address(a) for a in subscription.config.allowed_targets}
    if allowed and task["to"] not in allowed:
        violations.append(Violation("target_not_allowed", f"{task['to']} is not among the config's allowed targets"))
    violations.extend(_token_limits(subscription.token_limits, task, w3))
    return violations


def _limit(raw: object) -> Decimal | None:
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None


def _token_limits(limits: dict[str, str], task: ReviewedTask, w3: Web3 | None) -> list[Violation]:
    limits = {to_checksum_address(k): v for k, v in limits.items()}
    found = []
    value = int(task["value"])
    native = next((limits[a] for a in NATIVE if a in limits), None)
    if value and native is not None and Decimal(value) > (_limit(native) or Decimal(0)) * 10**18:
        found.append(Violation("token_limit_exceeded", f"value {value} wei is over the native limit {native}"))
    token = task["to"]
    call = AMOUNT_CALLS.get(task["data"][:10])
    if token in limits and call is not None:
        types, index = call
        try:
            amount = decode(types, bytes.fromhex(task["data"][10:]))[index]
        except Exception:  # calldata too short or malformed for the selector
            return [*found, Violation("token_limit_exceeded", f"unreadable amount in a call to {token}")]
        if w3 is None:
            raise RuntimeError("a token limit needs the chain to read decimals")
        decimals = int.from_bytes(w3.eth.call({"to": token, "data": HexStr(DECIMALS)})[-32:], "big")
        ceiling = (_limit(limits[token]) or Decimal(0)) * Decimal(10) ** decimals
        if Decimal(amount) > ceiling:
            found.append(
                Violation(
                    "token_limit_exceeded",
                    f"amount {amount} of {token} is over the subscription's limit {limits[token]}",
                )
            )
    return found
