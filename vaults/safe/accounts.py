"""Creating a Safe account: through the proxy factory's createProxyWithNonce, at an address
known before it exists (CREATE2 of the factory, salted by the setup and a salt nonce), so a
vault can name its Safe before any transaction is sent, and a rerun finds the same one."""

from __future__ import annotations

from typing import Any

from eth_abi import encode as abi_encode
from eth_typing import ChecksumAddress, HexStr
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3

from relayer.rpc import as_address
from vaults.safe.contracts import RECEIPT_TIMEOUT, SafeContracts, SafeUnavailable, artifact, safe_abi, safe_contracts
from vaults.safe.transactions import ZERO_ADDRESS

_encoder = Web3()  # ABI encoding only: no provider


def safe_setup_calldata(*, contracts: SafeContracts, owners: list[str], threshold: int) -> str:
    """Safe.setup (0x-hex): the owners, the threshold and the fallback handler; no module call,
    no payment. Raises ValueError for a threshold outside 1..len(owners) or a repeated owner."""
    checksummed = [as_address(o) for o in owners]
    if len(set(checksummed)) != len(checksummed):
        raise ValueError("A Safe's owners must be distinct.")
    if not 1 <= threshold <= len(checksummed):
        raise ValueError(f"A Safe's threshold must be between 1 and {len(checksummed)} (its owners), not {threshold}.")
    setup: Any = _encoder.eth.contract(abi=safe_abi())
    return str(
        setup.encode_abi(
            "setup",
            args=[checksummed, threshold, ZERO_ADDRESS, b"", contracts.fallback_handler, ZERO_ADDRESS, 0, ZERO_ADDRESS],
        )
    )


def safe_create_call(
    *, contracts: SafeContracts, owners: list[str], threshold: int, salt_nonce: int
) -> tuple[str, str]:
    """(to, data) of the proxy factory's createProxyWithNonce for this Safe."""
    factory: Any = _encoder.eth.contract(abi=artifact("SafeProxyFactory").abi)
    setup = safe_setup_calldata(contracts=contracts, owners=owners, threshold=threshold)
    data = factory.encode_abi("createProxyWithNonce", args=[contracts.singleton, bytes.fromhex(setup[2:]), salt_nonce])
    return contracts.proxy_factory, str(data)


def safe_address_predicted(
    w3: Web3, *, contracts: SafeContracts, owners: list[str], threshold: int, salt_nonce: int
) -> ChecksumAddress:
    """Where createProxyWithNonce puts the Safe: CREATE2 by the factory with
    salt = keccak(keccak(setup) ++ saltNonce) and init code = proxyCreationCode ++ uint256(singleton)
    (read from the factory itself, so this needs the factory on the chain)."""
    factory: Any = w3.eth.contract(address=contracts.proxy_factory, abi=artifact("SafeProxyFactory").abi)
    creation = bytes(factory.functions.proxyCreationCode().call())
    init = creation + abi_encode(["uint256"], [int(contracts.singleton, 16)])
    setup = bytes.fromhex(safe_setup_calldata(contracts=contracts, owners=owners, threshold=threshold)[2:])
    salt = keccak(keccak(setup) + abi_encode(["uint256"], [salt_nonce]))
    return as_address(
        "0x" + keccak(b"\xff" + bytes.fromhex(contracts.proxy_factory[2:]) + salt + keccak(init))[12:].hex()
    )


def safe_deploy_dev(
    w3: Web3,
    *,
    deployer: str,
    owners: list[str],
    threshold: int,
    salt_nonce: int,
    contracts: SafeContracts | None = None,
) -> ChecksumAddress:
    """Creates the Safe from `deployer`, an unlocked node account (development chains), and waits
    for it; returns the Safe already at the predicted address without sending anything. Without
    `contracts`, the chain's (deployed first if missing). Raises SafeUnavailable if it fails."""
    contracts = contracts or safe_contracts(w3, deployer=deployer)
    address = safe_address_predicted(w3, contracts=contracts, owners=owners, threshold=threshold, salt_nonce=salt_nonce)
    if w3.eth.get_code(address):
        return address
    to, data = safe_create_call(contracts=contracts, owners=owners, threshold=threshold, salt_nonce=salt_nonce)
    tx_hash = w3.eth.send_transaction({"from": as_address(deployer), "to": as_address(to), "data": HexStr(data)})
    receipt = w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=RECEIPT_TIMEOUT)
    if receipt["status"] != 1 or not w3.eth.get_code(address):
        raise SafeUnavailable(f"Creating the Safe at {address} failed (tx {HexBytes(tx_hash).to_0x_hex()}).")
    return address
