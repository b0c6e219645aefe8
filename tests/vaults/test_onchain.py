"""The vaults' contracts on a real anvil: compiling, bootstrap, deposit and withdraw calldata."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from web3 import Web3

from relayer.models import Chain, SigningKey
from relayer.rpc import as_address
from tests.conftest import AnvilFactory
from tests.support.relays import make_chain
from vaults import onchain
from vaults.models import Protocol, Vault
from vaults.services.bootstrap import DEFAULT_ASSETS, DEFAULT_PROTOCOLS, chain_bootstrap

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(anvils: AnvilFactory) -> Chain:
    return make_chain(anvils.start())


def quiet(_: str) -> None:
    pass


def send(chain: Chain, key: SigningKey, to: str, data: str) -> Any:
    """From the vault account, signed by the key manager, the way the relayer would send it."""
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    nonce = w3.eth.get_transaction_count(key.address, "pending")
    tx_hash = onchain.send_from_key(w3=w3, chain=chain, key=key, to=to, data=data, nonce=nonce)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    assert receipt["status"] == 1
    return receipt


def test_contracts_compile_and_the_second_call_reads_the_cache(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    first = onchain.compiled()
    assert set(first) == {"TestAsset", "ProtocolVault", "VaultPolicyModule"}
    for contract in first.values():
        # PUSH1 or PUSH2 of the free memory pointer (the module's immutables need a PUSH2).
        assert contract.bytecode.startswith(("0x60", "0x61")) and len(contract.bytecode) > 1000
    assert {item.get("name") for item in first["ProtocolVault"].abi} >= {
        "deposit",
        "withdraw",
        "convertToAssets",
        "asset",
    }
    assert {item.get("name") for item in first["TestAsset"].abi} >= {"mint", "approve", "owner"}
    cached = list((tmp_path / "contracts").glob("*.json"))
    assert len(cached) == 1

    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("compiled again instead of reading the cache")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "run", no_compiler)
        assert onchain.compiled() is first  # in this process: parsed once
        onchain._loaded.clear()  # as in a new process: read from VAR_DIR/contracts
        assert onchain.compiled() == first


def test_compiling_without_solc_names_make_install(settings: Any, tmp_path: Path) -> None:
    settings.BASE_DIR = tmp_path  # no node_modules here
    with pytest.raises(onchain.OnchainError, match="make install"):
        onchain.compiled()


def test_calldata_encodes_erc4626_calls() -> None:
    receiver = "0x" + "ab" * 20
    deposit = onchain.deposit_calldata(5, receiver)
    assert deposit.startswith("0x6e553f65")  # deposit(uint256,address)
    assert deposit.endswith("ab" * 20) and int(deposit[10:74], 16) == 5
    withdraw = onchain.withdraw_calldata(7, receiver, "0x" + "cd" * 20)
    assert withdraw.startswith("0xb460af94")  # withdraw(uint256,address,address)
    assert int(withdraw[10:74], 16) == 7 and withdraw.endswith("cd" * 20)


def test_bootstrap_deploys_funds_and_approves(chain: Chain) -> None:
    vault = chain_bootstrap(chain=chain, say=quiet)
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))

    assert vault.vault_id == "vault-eth-001" and vault.chain_id == 31337
    assert vault.account.purpose == "relayer" and vault.operator.purpose == "operator"
    assert not vault.policies.exists()
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=chain)}
    assert set(protocols) == set(DEFAULT_PROTOCOLS)
    for address in [vault.asset_address, *protocols.values()]:
        assert onchain.has_code(w3, address)
    assert {onchain.vault_asset(w3, a) for a in protocols.values()} == {vault.asset_address}

    held = onchain.positions(w3=w3, account=vault.account.address, asset=vault.asset_address, protocols=protocols)
    assert held.idle == DEFAULT_ASSETS == held.total
    assert held.by_protocol == dict.fromkeys(DEFAULT_PROTOCOLS, 0)
    assert w3.eth.get_balance(vault.account.address) > 0
    token = w3.eth.contract(address=as_address(vault.asset_address), abi=onchain.compiled()["TestAsset"].abi)
    for address in protocols.values():
        assert token.functions.allowance(vault.account.address, address).call() == onchain.MAX_UINT256


def test_deposit_and_withdraw_move_assets_through_a_protocol_vault(chain: Chain) -> None:
    vault = chain_bootstrap(chain=chain, say=quiet)
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    account = vault.account.address
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=chain)}
    aave = protocols["Aave USDC"]
    amount = 250_000 * 10**6

    # No approve here: bootstrap approved every protocol vault already.
    send(chain, vault.account, aave, onchain.deposit_calldata(amount, account))
    held = onchain.positions(w3=w3, account=account, asset=vault.asset_address, protocols=protocols)
    assert held.by_protocol["Aave USDC"] == amount
    assert held.idle == DEFAULT_ASSETS - amount
    assert held.total == DEFAULT_ASSETS

    send(chain, vault.account, aave, onchain.withdraw_calldata(amount // 2, account, account))
    held = onchain.positions(w3=w3, account=account, asset=vault.asset_address, protocols=protocols)
    assert held.by_protocol["Aave USDC"] == amount // 2
    assert held.idle == DEFAULT_ASSETS - amount // 2


def test_bootstrap_twice_reuses_the_vault_and_the_contracts(chain: Chain) -> None:
    first = chain_bootstrap(chain=chain, say=quiet)
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=chain)}
    send(chain, first.account, protocols["Morpho USDC"], onchain.deposit_calldata(10**6, first.account.address))
    block = w3.eth.block_number

    lines: list[str] = []
    second = chain_bootstrap(chain=chain, say=lines.append)

    assert second.pk == first.pk
    assert (second.account_id, second.operator_id, second.asset_address) == (
        first.account_id,
        first.operator_id,
        first.asset_address,
    )
    assert {p.name: p.address for p in Protocol.objects.filter(chain=chain)} == protocols
    assert Vault.objects.count() == 1 and SigningKey.objects.count() == 2
    assert w3.eth.block_number == block, "a rerun with everything in place sends nothing"
    held = onchain.positions(w3=w3, account=first.account.address, asset=first.asset_address, protocols=protocols)
    assert held.total == DEFAULT_ASSETS, "funds are topped up, not minted again"
    assert any("reusing" in line for line in lines)


def test_bootstrap_redeploys_when_the_chain_lost_the_contracts(anvils: AnvilFactory) -> None:
    chain = make_chain(anvils.start())
    first = chain_bootstrap(chain=chain, say=quiet)
    old = {p.name: p.address for p in Protocol.objects.filter(chain=chain)}

    # A restarted anvil: same chain id, nothing deployed.
    chain = make_chain(anvils.start())
    second = chain_bootstrap(chain=chain, say=quiet)

    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    new = {p.name: p.address for p in Protocol.objects.filter(chain=chain)}
    assert second.pk == first.pk and second.account_id == first.account_id
    assert all(onchain.has_code(w3, a) for a in [second.asset_address, *new.values()])
    assert set(new) == set(old)
    held = onchain.positions(w3=w3, account=second.account.address, asset=second.asset_address, protocols=new)
    assert held.idle == DEFAULT_ASSETS


def test_chain_bootstrap_command(chain: Chain) -> None:
    out = io.StringIO()
    call_command("chain", "bootstrap", "--vault-id", "vault-cmd", "--protocol", "Aave USDC", stdout=out)
    text = out.getvalue()
    assert "deployed ProtocolVault 'Aave USDC'" in text
    assert "vault vault-cmd ready on chain 31337" in text
    assert list(Protocol.objects.filter(chain=chain).values_list("name", flat=True)) == ["Aave USDC"]
