"""Safe v1.4.1's contracts on a chain: the published artifacts, their canonical addresses, and
their deployment on a development chain.

The bytecode and ABIs are read from the npm package `@safe-global/safe-contracts` (its compiled
artifacts, never recompiled here) and the addresses of public chains from
`@safe-global/safe-deployments`. A chain that package does not list (anvil, 31337) gets the same
contracts at fixed CREATE2 addresses through the deterministic deployment proxy anvil ships, so
every restart of the chain finds them at the same place once `chain bootstrap` deployed them.

Nothing is cached per chain: whether the code is there is asked each time (four eth_getCode), so a
restarted anvil with the same chain id is never taken for one that has the contracts."""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from eth_typing import ChecksumAddress, HexStr
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3

from orchestrator.infra.errors import DomainError
from relayer.rpc import as_address

SAFE_VERSION = "1.4.1"
# Arachnid's deterministic deployment proxy: anvil has it at genesis, as most public chains do.
CREATE2_PROXY = as_address("0x4e59b44847b379578588920cA78FbF26c0B4956C")
CREATE2_SALT = b"\x00" * 32
RECEIPT_TIMEOUT = 30.0

# name in the artifacts -> (artifact path under build/artifacts/contracts, safe-deployments file)
ARTIFACTS = {
    "Safe": ("Safe.sol/Safe.json", "safe.json"),
    "SafeProxyFactory": ("proxies/SafeProxyFactory.sol/SafeProxyFactory.json", "safe_proxy_factory.json"),
    "CompatibilityFallbackHandler": (
        "handler/CompatibilityFallbackHandler.sol/CompatibilityFallbackHandler.json",
        "compatibility_fallback_handler.json",
    ),
    "MultiSendCallOnly": ("libraries/MultiSendCallOnly.sol/MultiSendCallOnly.json", "multi_send_call_only.json"),
}


class SafeUnavailable(DomainError, RuntimeError):
    """The Safe contracts (or a Safe) are not where they should be on this chain."""

    code = "safe_unavailable"
    http_status = 409
    default_message = "The Safe contracts are not available on this chain."


@dataclass(frozen=True)
class Artifact:
    abi: list[dict[str, Any]]
    bytecode: str  # creation code, 0x-hex
    deployed: str  # runtime code, 0x-hex


@dataclass(frozen=True)
class SafeContracts:
    singleton: ChecksumAddress
    proxy_factory: ChecksumAddress
    fallback_handler: ChecksumAddress
    multi_send_call_only: ChecksumAddress


def _package(name: str) -> Path:
    path = Path(settings.BASE_DIR) / "node_modules" / "@safe-global" / name
    if not path.is_dir():
        raise SafeUnavailable(f"@safe-global/{name} is not installed in {path.parent}: run `make install`.")
    return path


@cache
def artifact(name: str) -> Artifact:
    """A Safe contract's ABI and bytecode, from the npm package's compiled artifacts."""
    data = json.loads((_package("safe-contracts") / "build/artifacts/contracts" / ARTIFACTS[name][0]).read_text())
    return Artifact(abi=data["abi"], bytecode=data["bytecode"], deployed=data["deployedBytecode"])


def safe_abi() -> list[dict[str, Any]]:
    return artifact("Safe").abi


@cache
def _deployment(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (_package("safe-deployments") / f"dist/assets/v{SAFE_VERSION}" / ARTIFACTS[name][1]).read_text()
    )
    return data


def canonical_addresses(chain_id: int) -> SafeContracts | None:
    """Where safe-deployments says v1.4.1 lives on `chain_id` (its "canonical" deployment where
    the chain has several, e.g. canonical and eip155), or None for a chain it does not list. No RPC."""
    found: dict[str, ChecksumAddress] = {}
    for name in ARTIFACTS:
        data = _deployment(name)
        kinds = data["networkAddresses"].get(str(chain_id))
        if not kinds:
            return None
        listed = kinds if isinstance(kinds, list) else [kinds]
        kind = "canonical" if "canonical" in listed else listed[0]
        found[name] = as_address(data["deployments"][kind]["address"])
    return _named(found)


def _named(found: dict[str, ChecksumAddress]) -> SafeContracts:
    return SafeContracts(
        singleton=found["Safe"],
        proxy_factory=found["SafeProxyFactory"],
        fallback_handler=found["CompatibilityFallbackHandler"],
        multi_send_call_only=found["MultiSendCallOnly"],
    )


def create2_address(name: str) -> ChecksumAddress:
    """Where the deterministic deployment proxy puts `name` (salt 0):
    keccak(0xff ++ proxy ++ salt ++ keccak(initcode))[12:]."""
    init = bytes.fromhex(artifact(name).bytecode.removeprefix("0x"))
    return as_address(
        "0x" + keccak(b"\xff" + bytes.fromhex(CREATE2_PROXY[2:]) + CREATE2_SALT + keccak(init))[12:].hex()
    )


def development_addresses() -> SafeContracts:
    """The CREATE2 addresses of a chain safe-deployments does not list. No RPC."""
    return _named({name: create2_address(name) for name in ARTIFACTS})


def safe_contracts(w3: Web3, *, deployer: str | None = None) -> SafeContracts:
    """Safe v1.4.1 on the chain `w3` talks to: its canonical addresses on a chain
    safe-deployments lists, else the CREATE2 addresses of a development chain, deployed from
    `deployer` (an unlocked node account) where they have no code yet; a second call sends
    nothing. Raises SafeUnavailable when code is missing and cannot (or may not) be deployed."""
    chain_id = w3.eth.chain_id
    listed = canonical_addresses(chain_id)
    if listed is not None:
        missing = [a for a in astuple(listed) if not w3.eth.get_code(a)]
        if missing:
            raise SafeUnavailable(
                f"Chain {chain_id} should have Safe {SAFE_VERSION} at {missing[0]} (safe-deployments), "
                "but there is no code there."
            )
        return listed
    found = development_addresses()
    addresses = zip(ARTIFACTS, astuple(found), strict=True)
    missing_names = [name for name, address in addresses if not w3.eth.get_code(address)]
    if not missing_names:
        return found
    if deployer is None:
        raise SafeUnavailable(
            f"Chain {chain_id} has no Safe {SAFE_VERSION} {missing_names[0]} at {create2_address(missing_names[0])}: "
            "run `./manage.py chain bootstrap`."
        )
    if not w3.eth.get_code(CREATE2_PROXY):
        raise SafeUnavailable(f"Chain {chain_id} has no deterministic deployment proxy at {CREATE2_PROXY}.")
    # All sent, then all awaited: on a chain that batches, one block instead of four.
    sent = [
        (
            name,
            w3.eth.send_transaction(
                {
                    "from": as_address(deployer),
                    "to": CREATE2_PROXY,
                    "data": HexStr("0x" + CREATE2_SALT.hex() + artifact(name).bytecode.removeprefix("0x")),
                }
            ),
        )
        for name in missing_names
    ]
    for name, tx_hash in sent:
        receipt = w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=RECEIPT_TIMEOUT)
        if receipt["status"] != 1 or not w3.eth.get_code(create2_address(name)):
            raise SafeUnavailable(f"Deploying Safe {SAFE_VERSION} {name} at {create2_address(name)} failed.")
    return found
