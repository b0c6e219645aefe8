"""Helpers for relayer tests: chains, funded signers, contracts to call, and the checks the
key manager's tests share (signing, refusing to sign, no key material in what is shown)."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from web3 import Web3

from orchestrator.engine.services import workflow_sweep
from relayer.keys import KeyManagerError, LocalKeyManager, key_manager
from relayer.models import Chain, RelayTransaction, SigningKey, TxPhase
from tests.conftest import free_port, wait_until

RECEIVER = "0x000000000000000000000000000000000000dEaD"


def run_command(*args: str) -> tuple[str, str]:
    """Runs a management command; returns what it wrote to stdout and to stderr."""
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def closed_url() -> str:
    """An RPC URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


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


def fund(rpc_url: str, address: str, wei: int) -> None:
    """Sends `wei` from the node's first prefunded account and waits for it to mine."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    automine = rpc(rpc_url, "anvil_getAutomine")
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": wei})
    if not automine:
        rpc(rpc_url, "evm_mine")
    w3.eth.wait_for_transaction_receipt(tx, timeout=10)


def funded_signer(rpc_url: str, eth: int = 10) -> SigningKey:
    key = key_manager().create_key(purpose="relayer", label="test")
    fund(rpc_url, key.address, Web3.to_wei(eth, "ether"))
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


# --- the key manager ------------------------------------------------------------------------

Configure = Callable[[str], None]


DOMAIN = {
    "name": "Vault Orchestrator",
    "version": "1",
    "chainId": 31337,
    "verifyingContract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
}


TYPES = {
    "Withdrawal": [
        {"name": "vault", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "memo", "type": "string"},
    ]
}


MESSAGE = {"vault": RECEIVER, "amount": 10**18, "memo": "rebalance"}


def b64_key(size: int = 32) -> str:
    return base64.b64encode(secrets.token_bytes(size)).decode()


def key_forms(secret: bytes) -> list[bytes]:
    """The private key as raw bytes and as hex (lower and upper case, with and without 0x)."""
    hexed = secret.hex()
    return [secret, *(form.encode() for form in (hexed, "0x" + hexed, hexed.upper(), "0x" + hexed.upper()))]


def assert_no_key_material(blob: bytes | str, secret: bytes) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for form in key_forms(secret):
        assert form not in data
    assert secret.hex() not in data.decode("latin-1").lower()


def private_key(key: SigningKey) -> bytes:
    return key_manager()._private_key(key)


def a_transaction(nonce: int = 0) -> dict[str, Any]:
    return {
        "to": RECEIVER,
        "value": 12345,
        "gas": 21000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": nonce,
        "chainId": 31337,
        "type": 2,
    }


def assert_signs_for(key: SigningKey, manager: LocalKeyManager | None = None) -> None:
    """All three kinds of signature recover to the key's address."""
    km = manager or key_manager()
    signed = km.sign_transaction(key=key, tx=a_transaction())
    assert Account.recover_transaction(signed.raw_transaction) == key.address

    signature = km.sign_message(key=key, text="hello from the relayer")
    assert signature.startswith("0x") and len(signature) == 132
    assert Account.recover_message(encode_defunct(text="hello from the relayer"), signature=signature) == (key.address)

    typed = km.sign_typed_data(key=key, domain=DOMAIN, types=TYPES, message=MESSAGE)
    signable = encode_typed_data(domain_data=DOMAIN, message_types=TYPES, message_data=MESSAGE)
    assert typed.startswith("0x") and Account.recover_message(signable, signature=typed) == key.address


def assert_cannot_sign(key: SigningKey) -> KeyManagerError:
    km = key_manager()
    attempts: list[Callable[[], Any]] = [
        lambda: km.sign_transaction(key=key, tx=a_transaction()),
        lambda: km.sign_message(key=key, text="x"),
        lambda: km.sign_typed_data(key=key, domain=DOMAIN, types=TYPES, message=MESSAGE),
    ]
    errors = []
    for attempt in attempts:
        with pytest.raises(KeyManagerError) as info:
            attempt()
        errors.append(info.value)
    return errors[0]
