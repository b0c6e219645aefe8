"""A Safe's state on chain (owners, threshold, nonce), the calls that change its owners, and
what it answered to an execTransaction: its events and its GSxxx revert codes."""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_typing import ChecksumAddress
from eth_utils import keccak
from web3 import Web3
from web3.types import RPCEndpoint

from relayer.rpc import as_address
from vaults.safe.contracts import SafeUnavailable
from vaults.safe.transactions import SENTINEL, Call, safe_encoder

EXECUTION_SUCCESS = keccak(text="ExecutionSuccess(bytes32,uint256)")
EXECUTION_FAILURE = keccak(text="ExecutionFailure(bytes32,uint256)")
ERROR_STRING = keccak(text="Error(string)")[:4]

# Safe 1.4.1's require() codes (docs/error_codes.md of safe-smart-account 1.4.1, checked against
# the package's contracts/), in words for people.
SAFE_ERRORS: dict[str, str] = {
    "GS000": "could not finish initialization",
    "GS001": "threshold needs to be defined",
    "GS002": "a call to set up modules couldn't be executed because the destination account was not a contract",
    "GS010": "not enough gas to execute the Safe transaction",
    "GS011": "could not pay gas costs with ether",
    "GS012": "could not pay gas costs with token",
    "GS013": "the Safe transaction failed (an inner call reverted) with safeTxGas and gasPrice both 0",
    "GS020": "signatures data too short",
    "GS021": "invalid contract signature location: inside static part",
    "GS022": "invalid contract signature location: length not present",
    "GS023": "invalid contract signature location: data not complete",
    "GS024": "invalid contract signature provided",
    "GS025": "hash has not been approved",
    "GS026": "invalid owner provided (a signature not from an owner, over another hash or nonce, or out of order)",
    "GS027": "data hash and hash of the pre-image data do not match",
    "GS030": "only owners can approve a hash",
    "GS031": "method can only be called from this contract",
    "GS100": "modules have already been initialized",
    "GS101": "invalid module address provided",
    "GS102": "module has already been added",
    "GS103": "invalid prevModule, module pair provided",
    "GS104": "method can only be called from an enabled module",
    "GS105": "invalid starting point for fetching paginated modules",
    "GS106": "invalid page size for fetching paginated modules",
    "GS200": "owners have already been set up",
    "GS201": "threshold cannot exceed owner count",
    "GS202": "threshold needs to be greater than 0",
    "GS203": "invalid owner address provided",
    "GS204": "address is already an owner",
    "GS205": "invalid prevOwner, owner pair provided",
    "GS300": "guard does not implement IERC165",
    "GS400": "fallback handler cannot be set to self",
}
_CODE = re.compile(r"GS\d{3}")


@dataclass(frozen=True)
class SafeState:
    owners: list[ChecksumAddress]  # in the Safe's linked-list order (getOwners)
    threshold: int
    nonce: int


def safe_state(w3: Web3, safe: str) -> SafeState:
    """The Safe's owners, threshold and nonce, in one JSON-RPC batch (so, in practice, of one
    block). Raises SafeUnavailable when no Safe answers at `safe`."""
    contract = safe_encoder()
    address = as_address(safe)
    calls = [contract.encode_abi(name) for name in ("getOwners", "getThreshold", "nonce")]
    provider: Any = w3.provider  # every HTTP provider batches; the base type does not say so
    answers = provider.make_batch_request(
        [(RPCEndpoint("eth_call"), [{"to": address, "data": data}, "latest"]) for data in calls]
    )
    if not isinstance(answers, list) or any("error" in a for a in answers):
        raise SafeUnavailable(f"Reading the Safe {address} failed: {answers}")
    raw = [bytes.fromhex(str(a["result"]).removeprefix("0x")) for a in sorted(answers, key=lambda a: int(a["id"]))]
    if any(len(r) < 32 for r in raw):
        raise SafeUnavailable(f"There is no Safe at {address} (it has no code, or is not a Safe).")
    (owners,) = abi_decode(["address[]"], raw[0])
    return SafeState(
        owners=[as_address(o) for o in owners],
        threshold=int.from_bytes(raw[1][:32], "big"),
        nonce=int.from_bytes(raw[2][:32], "big"),
    )


def owner_change_calls(*, safe: str, owners_now: list[str], owners_wanted: list[str], threshold: int) -> list[Call]:
    """The Safe's calls to itself that turn `owners_now` (in getOwners order) into
    `owners_wanted` with `threshold`: additions (each at the head of the Safe's list), removals
    (each naming the owner before it in the list, SENTINEL for the first), then
    changeThreshold. Additions and removals keep a threshold of 1 on the way, so none is refused
    for exceeding the owners left: batch them in one MultiSend (one Safe transaction), so that
    intermediate threshold never holds outside it. Raises ValueError for an impossible target."""
    target = as_address(safe)
    current = [as_address(o) for o in owners_now]
    wanted = [as_address(o) for o in owners_wanted]
    if len(set(wanted)) != len(wanted) or as_address(SENTINEL) in wanted or as_address(safe) in wanted:
        raise ValueError("The wanted owners must be distinct addresses, neither the Safe nor the sentinel.")
    if not 1 <= threshold <= len(wanted):
        raise ValueError(f"The threshold must be between 1 and {len(wanted)} (the wanted owners), not {threshold}.")
    contract, calls = safe_encoder(), []
    for owner in wanted:
        if owner not in current:
            calls.append(Call(target, 0, str(contract.encode_abi("addOwnerWithThreshold", args=[owner, 1]))))
            current.insert(0, owner)
    for owner in [o for o in current if o not in wanted]:
        i = current.index(owner)
        previous = current[i - 1] if i else as_address(SENTINEL)
        calls.append(Call(target, 0, str(contract.encode_abi("removeOwner", args=[previous, owner, 1]))))
        current.pop(i)
    calls.append(Call(target, 0, str(contract.encode_abi("changeThreshold", args=[threshold]))))
    return calls


def _execution_events(receipt: Any, safe: str, safe_tx_hash: bytes) -> set[bytes]:
    found = set()
    for log in receipt["logs"]:
        topics = [bytes(t) for t in log["topics"]]
        if as_address(log["address"]) == as_address(safe) and len(topics) == 2 and topics[1] == bytes(safe_tx_hash):
            found.add(topics[0])
    return found


def safe_execution_succeeded(receipt: Any, *, safe: str, safe_tx_hash: bytes) -> bool:
    """Whether the receipt holds the Safe's ExecutionSuccess for this SafeTx hash. False for an
    ExecutionFailure (an inner call failed with safeTxGas or gasPrice set: the nonce is used
    all the same), a reverted transaction, or a receipt of something else."""
    if receipt.get("status", 1) != 1:
        return False
    events = _execution_events(receipt, safe, safe_tx_hash)
    return EXECUTION_SUCCESS in events and EXECUTION_FAILURE not in events


def safe_revert_reason(revert_data_or_message: str) -> str:
    """ "GS020: signatures data too short" from an Error(string) revert payload (0x08c379a0...)
    or a message naming a GSxxx code; a message with neither comes back as it is."""
    text = revert_data_or_message or ""
    found = _CODE.search(text)
    if found is None:
        payload = re.search(r"0x" + ERROR_STRING.hex() + r"([0-9a-fA-F]*)", text)
        if payload is None:
            return text
        with suppress(Exception):  # not an Error(string) after all: the text is all there is
            (reason,) = abi_decode(["string"], bytes.fromhex(payload.group(1)))
            found = _CODE.search(reason)
            if found is None:
                return str(reason)
        if found is None:
            return text
    code = found.group(0)
    return f"{code}: {SAFE_ERRORS.get(code, 'unknown Safe error')}"
