"""Gas measured on anvil, as the benchmarks that compare ways of sending the same calls do: an
RPC call that fails loudly, a state put back once measured (so every way starts from the same
one), an address sending as a plain account (impersonated) and the gas of calls sent from it.

Snapshots and reverts are only for a chain nobody else is sending to: a revert undoes their
transactions too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import CommandError
from web3 import Web3

from vaults import safe as safe_lib


def rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    if "error" in response:
        raise CommandError(f"{method}: {response['error']}")
    return response["result"]


@contextmanager
def reverted(w3: Web3) -> Iterator[None]:
    """What is sent inside the block is undone after it (evm_snapshot, then evm_revert)."""
    snapshot = rpc(w3, "evm_snapshot", [])
    try:
        yield
    finally:
        rpc(w3, "evm_revert", [snapshot])


@contextmanager
def impersonating(w3: Web3, address: str) -> Iterator[None]:
    """`address` (a contract too, such as a Safe) sends transactions as an unlocked account."""
    rpc(w3, "anvil_impersonateAccount", [address])
    try:
        yield
    finally:
        rpc(w3, "anvil_stopImpersonatingAccount", [address])


def send_as(w3: Web3, sender: str, calls: list[safe_lib.Call]) -> int:
    """Sends `calls` one by one from `sender` and returns their gas used, summed."""
    total = 0
    for call in calls:
        sent = w3.eth.send_transaction({"from": sender, "to": call.to, "data": call.data, "value": call.value})  # type: ignore[typeddict-item]
        receipt = w3.eth.wait_for_transaction_receipt(sent)
        if receipt["status"] != 1:
            raise CommandError(f"plain call to {call.to} reverted: the baseline is not the same rebalance")
        total += int(receipt["gasUsed"])
    return total
