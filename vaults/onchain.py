"""The vaults' contracts on a chain: compiling, deploying, funding, calldata and positions.

Three contracts, in vaults/contracts/: TestAsset (a mintable USDC-like ERC-20), ProtocolVault
(a plain ERC-4626 that stands in for "Aave USDC" and the like) and VaultPolicyModule (the Safe
module of vaults/module/). They are compiled offline by solc-js from node_modules
(`make install`), against OpenZeppelin from node_modules too.

Deploying and funding use an unlocked anvil account: this is development and test tooling,
not how production funds move. Calldata and positions are what the rest of the system uses."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from eth_abi import encode as abi_encode
from eth_typing import ChecksumAddress
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.types import RPCEndpoint, TxReceipt, Wei

from relayer.keys import key_manager
from relayer.models import Chain, SigningKey
from relayer.rpc import as_address, as_hex

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
COMPILE_SCRIPT = CONTRACTS_DIR / "compile.js"
SOURCES = {
    "TestAsset": "TestAsset.sol",
    "ProtocolVault": "ProtocolVault.sol",
    "VaultPolicyModule": "VaultPolicyModule.sol",
}

# Cancun, not the compiler's default (newer): any recent anvil or testnet runs it.
COMPILER_SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
}

MAX_UINT256 = 2**256 - 1
RECEIPT_TIMEOUT = 30.0


class OnchainError(RuntimeError):
    """Compiling, deploying or sending failed."""


@dataclass(frozen=True)
class Contract:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # creation code, 0x-prefixed


# --- Compiling ------------------------------------------------------------------------------


def _node_modules() -> Path:
    return Path(settings.BASE_DIR) / "node_modules"


def _package_version(package: str) -> str:
    manifest = _node_modules() / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except FileNotFoundError:
        raise OnchainError(f"{package} is not installed in {_node_modules()}; run `make install`.") from None


def _standard_json_input() -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {file: {"content": (CONTRACTS_DIR / file).read_text()} for file in SOURCES.values()},
        "settings": COMPILER_SETTINGS,
    }


def _cache_key(compiler_input: dict[str, Any]) -> str:
    # Imports are read from node_modules, not carried in the input: the versions of solc and
    # OpenZeppelin are part of what was compiled, and so is the script that reads them.
    material = {
        "input": compiler_input,
        "solc": _package_version("solc"),
        "openzeppelin": _package_version("@openzeppelin/contracts"),
        "script": COMPILE_SCRIPT.read_text(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _run_solc(compiler_input: dict[str, Any]) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        raise OnchainError("node is not on PATH: solc-js needs Node.js (see `make install`).")
    result = subprocess.run(
        [node, str(COMPILE_SCRIPT), str(_node_modules())],
        input=json.dumps(compiler_input),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise OnchainError(f"solc-js failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    output: dict[str, Any] = json.loads(result.stdout)
    # Warnings come back in the same list as errors; only errors mean there is no bytecode.
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise OnchainError("solc-js reported errors:\n" + "\n".join(errors))
    return output


def _write_atomically(path: Path, text: str) -> None:
    # Parallel test processes may compile at once: each writes whole files, the last one wins.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


_loaded: dict[Path, dict[str, Contract]] = {}


def compiled() -> dict[str, Contract]:
    """TestAsset, ProtocolVault and VaultPolicyModule, by name. Compiled once per version of the sources and the
    compiler, then read from VAR_DIR/contracts/<hash>.json."""
    compiler_input = _standard_json_input()
    cached = Path(settings.VAR_DIR) / "contracts" / f"{_cache_key(compiler_input)}.json"
    if cached in _loaded:  # calldata helpers call this per use: parse the artifacts once
        return _loaded[cached]
    if cached.exists():
        artifacts = json.loads(cached.read_text())
    else:
        output = _run_solc(compiler_input)
        artifacts = {
            name: {
                "abi": output["contracts"][file][name]["abi"],
                "bytecode": "0x" + output["contracts"][file][name]["evm"]["bytecode"]["object"],
            }
            for name, file in SOURCES.items()
        }
        _write_atomically(cached, json.dumps(artifacts))
    contracts = {name: Contract(name=name, abi=a["abi"], bytecode=a["bytecode"]) for name, a in artifacts.items()}
    _loaded[cached] = contracts
    return contracts


@cache
def _erc20_abi() -> list[dict[str, Any]]:
    return compiled()["TestAsset"].abi


def _erc4626_abi() -> list[dict[str, Any]]:
    return compiled()["ProtocolVault"].abi


# --- Calldata (what the rest of the system sends) ---------------------------------------------


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


# Hand-encoded with eth_abi: a web3 contract object costs milliseconds per call on a hot path
# (Flow A builds calldata for every action of every intent). Selectors are fixed by the ABI.
DEPOSIT = _selector("deposit(uint256,address)")
WITHDRAW = _selector("withdraw(uint256,address,address)")
APPROVE = _selector("approve(address,uint256)")
BALANCE_OF = _selector("balanceOf(address)")
MAX_WITHDRAW = _selector("maxWithdraw(address)")


def _calldata(selector: bytes, types: list[str], args: list[Any]) -> str:
    return "0x" + (selector + abi_encode(types, args)).hex()


def deposit_calldata(assets: int, receiver: str) -> str:
    """ERC-4626 deposit(uint256 assets, address receiver), as 0x hex."""
    return _calldata(DEPOSIT, ["uint256", "address"], [assets, as_address(receiver)])


def withdraw_calldata(assets: int, receiver: str, owner: str) -> str:
    """ERC-4626 withdraw(uint256 assets, address receiver, address owner), as 0x hex."""
    return _calldata(WITHDRAW, ["uint256", "address", "address"], [assets, as_address(receiver), as_address(owner)])


def approve_calldata(spender: str, amount: int = MAX_UINT256) -> str:
    """ERC-20 approve(address spender, uint256 amount), as 0x hex."""
    return _calldata(APPROVE, ["address", "uint256"], [as_address(spender), amount])


# --- Reading positions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Positions:
    idle: int  # the asset the account holds itself, in base units
    by_protocol: dict[str, int]  # what its shares in each protocol vault are worth, in base units

    @property
    def total(self) -> int:
        return self.idle + sum(self.by_protocol.values())


def positions(*, w3: Web3, account: str, asset: str, protocols: dict[str, str]) -> Positions:
    """The account's asset, idle and in each protocol vault (name -> address), valued by each
    vault's maxWithdraw (its shares converted to assets, rounded down). One batched JSON-RPC
    request for all of it, so every read sees the same head block in practice."""
    holder = as_address(account)
    names = list(protocols)
    calls = [(asset, _calldata(BALANCE_OF, ["address"], [holder]))] + [
        (protocols[n], _calldata(MAX_WITHDRAW, ["address"], [holder])) for n in names
    ]
    provider: Any = w3.provider  # every HTTP provider batches; the base type does not say so
    answers = provider.make_batch_request(
        [(RPCEndpoint("eth_call"), [{"to": as_address(to), "data": data}, "latest"]) for to, data in calls]
    )
    if not isinstance(answers, list):
        raise OnchainError(f"the node refused the batch: {answers}")
    values = []
    for answer in sorted(answers, key=lambda a: int(a["id"])):
        if "error" in answer:
            raise OnchainError(f"reading positions failed: {answer['error']}")
        values.append(int(str(answer["result"]), 16))
    return Positions(idle=values[0], by_protocol=dict(zip(names, values[1:], strict=True)))


def has_code(w3: Web3, address: str) -> bool:
    return len(w3.eth.get_code(as_address(address))) > 0


def vault_asset(w3: Web3, vault_address: str) -> ChecksumAddress:
    """The asset an ERC-4626 vault holds."""
    vault = w3.eth.contract(address=as_address(vault_address), abi=_erc4626_abi())
    return as_address(vault.functions.asset().call())


# --- Bootstrap: deploying and funding with an unlocked anvil account ---------------------------


def _mined(w3: Web3, tx_hash: HexBytes, what: str) -> TxReceipt:
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT)
    if receipt["status"] != 1:
        raise OnchainError(f"{what} reverted (tx {tx_hash.to_0x_hex()})")
    return receipt


def _deploy(w3: Web3, deployer: str, contract: Contract, *args: Any) -> ChecksumAddress:
    factory = w3.eth.contract(abi=contract.abi, bytecode=contract.bytecode)
    tx_hash = factory.constructor(*args).transact({"from": as_address(deployer)})
    address = _mined(w3, tx_hash, f"deploying {contract.name}")["contractAddress"]
    if address is None:
        raise OnchainError(f"deploying {contract.name}: the receipt names no contract address")
    return as_address(address)


def deploy_asset(*, w3: Web3, deployer: str) -> ChecksumAddress:
    """A new TestAsset ("Test USD", tUSD, 6 decimals); `deployer` owns it and alone can mint."""
    return _deploy(w3, deployer, compiled()["TestAsset"])


def deploy_protocol_vault(*, w3: Web3, deployer: str, asset: str, name: str, symbol: str) -> ChecksumAddress:
    """A new ProtocolVault (ERC-4626) over `asset`, with shares named `name`/`symbol`."""
    return _deploy(w3, deployer, compiled()["ProtocolVault"], as_address(asset), name, symbol)


def fund_vault_account(*, w3: Web3, asset: str, account_address: str, assets: int, eth: int) -> None:
    """Mints `assets` (base units) of the TestAsset to the account and sends it `eth` wei for gas.

    Both are sent by the asset's owner, which must be an unlocked account of the node (the
    anvil account that deployed it)."""
    token = w3.eth.contract(address=as_address(asset), abi=_erc20_abi())
    owner = as_address(token.functions.owner().call())
    account = as_address(account_address)
    if assets > 0:
        _mined(w3, token.functions.mint(account, assets).transact({"from": owner}), "minting the asset")
    if eth > 0:
        _mined(w3, w3.eth.send_transaction({"from": owner, "to": account, "value": Wei(eth)}), "sending ETH")


def send_from_key(*, w3: Web3, chain: Chain, key: SigningKey, to: str, data: str, nonce: int) -> HexBytes:
    """Signs an EIP-1559 call with the key manager and broadcasts it; returns the hash.

    Bypasses the relayer (no RelayTransaction, no NonceCursor): for bootstrap and tests. The
    relayer resyncs its cursor when it meets a nonce used this way."""
    sender = as_address(key.address)
    base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tip = int(chain.priority_fee_wei)
    # Twice the base fee: room for it to rise for a few blocks before this would be stuck.
    max_fee = min(2 * base_fee + tip, int(chain.max_fee_cap_wei))
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": chain.chain_id,
        "from": sender,
        "to": as_address(to),
        "value": 0,
        "data": data,
        "nonce": nonce,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": min(tip, max_fee),
    }
    tx["gas"] = w3.eth.estimate_gas({"from": sender, "to": tx["to"], "data": as_hex(data)})
    del tx["from"]  # signing takes the sender from the key
    signed = key_manager().sign_transaction(key=key, tx=tx)
    return HexBytes(w3.eth.send_raw_transaction(signed.raw_transaction))


def approve_protocols(*, w3: Web3, chain: Chain, account_key: SigningKey, asset: str, spenders: list[str]) -> list[str]:
    """approve(spender, max uint256) on the asset from the vault account, for each protocol
    vault, so deposits later need no approve of their own. Waits for the receipts.

    Spenders already approved for max uint256 are skipped (an OpenZeppelin ERC-20 never lowers
    an infinite allowance), so running it again sends nothing. Returns the hashes sent."""
    owner = as_address(account_key.address)
    token = w3.eth.contract(address=as_address(asset), abi=_erc20_abi())
    pending = [s for s in spenders if token.functions.allowance(owner, as_address(s)).call() < MAX_UINT256]
    nonce = w3.eth.get_transaction_count(owner, "pending")
    # All sent first, then all awaited: one block, not one block each, on a chain that batches.
    hashes = [
        send_from_key(w3=w3, chain=chain, key=account_key, to=asset, data=approve_calldata(spender), nonce=nonce + i)
        for i, spender in enumerate(pending)
    ]
    for tx_hash in hashes:
        _mined(w3, tx_hash, "approve")
    return [h.to_0x_hex() for h in hashes]
