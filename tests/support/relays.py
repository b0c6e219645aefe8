"""Helpers for relayer tests: chains, funded signers, a reverting contract."""

from __future__ import annotations

import uuid
from typing import Any

from eth_abi import encode
from web3 import Web3

from orchestrator.engine.services import workflow_sweep
from relayer.keys import key_manager
from relayer.models import Chain, RelayTransaction, SigningKey, TxPhase
from tests.conftest import wait_until


def batched(tx_id: uuid.UUID) -> uuid.UUID:
    """The batch run the chain's lane put the request in (the lane runs on a worker, after commit)."""
    return wait_until(
        lambda: RelayTransaction.objects.filter(pk=tx_id).values_list("workflow_run_id", flat=True).first(),
        timeout=10,
        message=f"relay {tx_id} to be batched",
    )


def make_chain(rpc_url: str, **overrides: Any) -> Chain:
    values: dict[str, Any] = {
        "name": "anvil-test",
        "rpc_url": rpc_url,
        "confirmations": 1,
        "poll_interval": 0.2,
        "stuck_after": 2.0,
    }
    values.update(overrides)
    chain, _ = Chain.objects.update_or_create(chain_id=31337, defaults=values)
    return chain


def rpc(rpc_url: str, method: str, *params: Any) -> Any:
    response = Web3(Web3.HTTPProvider(rpc_url)).provider.make_request(method, list(params))
    assert "error" not in response, response
    return response.get("result")


def funded_signer(rpc_url: str, eth: int = 10) -> SigningKey:
    key = key_manager().create_key(purpose="relayer", label="test")
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    automine = rpc(rpc_url, "anvil_getAutomine")
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": key.address, "value": w3.to_wei(eth, "ether")})
    if not automine:
        rpc(rpc_url, "evm_mine")
    w3.eth.wait_for_transaction_receipt(tx, timeout=10)
    return key


def deploy_reverter(rpc_url: str, reason: str = "nope") -> str:
    """A contract whose every call reverts with Error(reason): hand-assembled, no compiler."""
    payload = bytes.fromhex("08c379a0") + encode(["string"], [reason])
    size = len(payload)
    prefix = 15  # PUSH2 size, PUSH2 offset, PUSH1 0, CODECOPY, PUSH2 size, PUSH1 0, REVERT|RETURN
    runtime = (
        bytes([0x61])
        + size.to_bytes(2, "big")
        + bytes([0x61])
        + prefix.to_bytes(2, "big")
        + bytes([0x60, 0x00, 0x39, 0x61])
        + size.to_bytes(2, "big")
        + bytes([0x60, 0x00, 0xFD])
        + payload
    )
    init = (
        bytes([0x61])
        + len(runtime).to_bytes(2, "big")
        + bytes([0x61])
        + prefix.to_bytes(2, "big")
        + bytes([0x60, 0x00, 0x39, 0x61])
        + len(runtime).to_bytes(2, "big")
        + bytes([0x60, 0x00, 0xF3])
    )
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": init + runtime})
    address = w3.eth.wait_for_transaction_receipt(tx, timeout=10)["contractAddress"]
    assert address is not None
    return str(address)


def nonce_on_chain(rpc_url: str, address: str) -> int:
    return int(Web3(Web3.HTTPProvider(rpc_url)).eth.get_transaction_count(address, "latest"))


def deploy_gate(rpc_url: str) -> str:
    """A contract with one bit of state: a call without data opens it; a call with data reverts
    unless it is open. A call with data depends on an earlier one without: hand-assembled."""
    runtime = bytes.fromhex(
        "36600a57"  # CALLDATASIZE, PUSH1 0x0a, JUMPI: with data, go and check
        "6001600055"  # SSTORE(0, 1): open
        "00"  # STOP
        "5b6000546015576000"  # JUMPDEST, SLOAD(0), PUSH1 0x15, JUMPI: open, go to the end
        "80fd"  # REVERT(0, 0)
        "5b00"  # JUMPDEST, STOP
    )
    init = bytes.fromhex(f"60{len(runtime):02x}600c600039{'60'}{len(runtime):02x}6000f3")
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": init + runtime})
    address = w3.eth.wait_for_transaction_receipt(tx, timeout=10)["contractAddress"]
    assert address is not None
    return str(address)


# Short retry and lease times, so that tests of failures and restarts finish quickly.
RELAY_ENV = {
    "RELAYER_RETRY_BASE_SECONDS": "0.3",
    "RELAYER_RETRY_MAX_SECONDS": "2",
    "RELAYER_MAX_ATTEMPTS": "40",
    "RELAYER_STEP_LEASE_SECONDS": "3",
}


def settled(tx_id: uuid.UUID, *phases: str, timeout: float = 60.0, sweep: bool = False) -> RelayTransaction:
    wanted = phases or (TxPhase.COMPLETED,)

    def check() -> RelayTransaction | None:
        if sweep:
            workflow_sweep(stall_seconds=0)
        return RelayTransaction.objects.filter(pk=tx_id, phase__in=wanted).first()

    return wait_until(
        check,
        timeout=timeout,
        interval=0.3 if sweep else 0.1,
        message=f"relay {tx_id} to reach {wanted} (now {RelayTransaction.objects.get(pk=tx_id).phase})",
    )
