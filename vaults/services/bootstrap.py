"""`manage.py chain bootstrap`: a local chain with a funded vault and protocols to allocate to.

Deploys a TestAsset and one ProtocolVault per protocol name with an unlocked anvil account,
records them as Protocol rows, creates the Vault (with new account and operator keys), mints it
the asset, gives it ETH for gas and approves every protocol vault. Development and test
tooling: it needs a node whose first account is unlocked (anvil).

Run again on the same chain, it reuses the Vault and its keys, reuses the contracts while they
still have code (a restarted anvil has none, and they are deployed afresh), and only tops up
funds and approvals that are missing. It never creates a VaultPolicy."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

from django.db import transaction
from web3 import Web3

from orchestrator.infra.errors import DomainError
from relayer.keys import key_manager
from relayer.models import Chain, KeyPurpose
from relayer.rpc import as_address, web3_for
from relayer.services.funding import dev_funding_after_commit
from vaults import onchain, safe
from vaults.models import Protocol, Vault

DEFAULT_PROTOCOLS = ("Aave USDC", "Compound USDC", "Morpho USDC")
DEFAULT_ASSETS = 1_000_000 * 10**6  # one million tUSD (6 decimals)
GAS_ETH = 10 * 10**18  # wei the vault account holds for gas


class BootstrapError(DomainError, RuntimeError):
    """A chain or vault that cannot be set up as asked (no protocols, the wrong chain, no
    account to deploy from, a vault id taken): the operator changes the request."""

    code = "bootstrap_refused"
    http_status = 400


def _share_symbol(name: str) -> str:
    """ "Aave USDC" -> "pvAaveUSDC": the protocol vault's share token symbol."""
    return "pv" + re.sub(r"[^A-Za-z0-9]", "", name)[:16]


def _reusable_asset(w3: Web3, protocols: dict[str, Protocol]) -> str | None:
    """The asset the recorded protocol vaults share, if every one still has code and they all
    hold the same asset (which has code too); otherwise None, and everything is redeployed."""
    if not protocols:
        return None
    if not all(onchain.has_code(w3, p.address) for p in protocols.values()):
        return None
    assets = {onchain.vault_asset(w3, p.address) for p in protocols.values()}
    if len(assets) != 1:
        return None
    (asset,) = assets
    return asset if onchain.has_code(w3, asset) else None


def _safe_for(
    w3: Web3, vault: Vault, *, deployer: str, owners: Sequence[str], threshold: int, say: Callable[[str], None]
) -> None:
    """The vault's Safe: deployed with `owners` and `threshold` at an address fixed by the vault
    id, so a rerun (or a restarted chain) finds or redeploys the same one. A vault whose Safe
    is recorded keeps it: its owners change by Safe transactions, not here."""
    if not 1 <= threshold <= len(owners):
        raise BootstrapError(f"a Safe threshold must be between 1 and {len(owners)} (its owners), not {threshold}")
    contracts = safe.safe_contracts(w3, deployer=deployer)
    salt = int.from_bytes(hashlib.sha256(vault.vault_id.encode()).digest()[:8], "big")
    predicted = safe.safe_address_predicted(
        w3, contracts=contracts, owners=list(owners), threshold=threshold, salt_nonce=salt
    )
    if vault.safe_address and as_address(vault.safe_address) != predicted and onchain.has_code(w3, vault.safe_address):
        say(f"reusing the Safe {vault.safe_address} of {vault.vault_id}")
        return
    address = safe.safe_deploy_dev(w3, deployer=deployer, owners=list(owners), threshold=threshold, salt_nonce=salt)
    Vault.objects.filter(pk=vault.pk).update(safe_address=address, auto_rebalance=False)
    vault.safe_address, vault.auto_rebalance = address, False
    say(f"vault {vault.vault_id} is held by the Safe {address} ({threshold} of {len(owners)} owners)")


def chain_bootstrap(
    *,
    chain: Chain,
    vault_id: str = "vault-eth-001",
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    assets: int = DEFAULT_ASSETS,
    say: Callable[[str], None] = print,
    safe_owners: Sequence[str] = (),
    safe_threshold: int = 0,
) -> Vault:
    """Makes `vault_id` exist on `chain`, holding at least `assets` (idle plus in protocols) of
    the test asset, with every protocol in `protocols` deployed and approved. Returns the Vault.

    With `safe_owners`, the funds are held by a Safe (v1.4.1, deployed here if the chain lacks
    it) with those owners and `safe_threshold`; the account key only pays its gas, and Flow A
    is off for the vault (docs/flow-b.md#safe-vaults)."""
    if not protocols:
        raise BootstrapError("name at least one protocol")
    w3 = web3_for(chain.rpc_url)
    if w3.eth.chain_id != chain.chain_id:
        raise BootstrapError(f"{chain.rpc_url} is chain {w3.eth.chain_id}, not {chain.chain_id}")
    accounts = w3.eth.accounts
    if not accounts:
        raise BootstrapError(f"{chain.rpc_url} has no unlocked account to deploy from: is it anvil?")
    deployer = accounts[0]

    vault = Vault.objects.filter(vault_id=vault_id).select_related("account", "operator").first()
    if vault is not None and vault.chain_id != chain.chain_id:
        raise BootstrapError(f"{vault_id} already exists on chain {vault.chain_id}")

    # Contracts: reused when the recorded ones still have code, else all deployed afresh.
    recorded = {p.name: p for p in Protocol.objects.filter(chain=chain, name__in=protocols)}
    asset = _reusable_asset(w3, recorded) if len(recorded) == len(protocols) else None
    if asset is not None:
        say(f"reusing asset {asset} and {len(recorded)} protocol vaults on chain {chain.chain_id}")
        addresses = {name: recorded[name].address for name in protocols}
    else:
        asset = onchain.deploy_asset(w3=w3, deployer=deployer)
        say(f"deployed TestAsset (tUSD) at {asset}")
        addresses = {}
        for name in protocols:
            address = onchain.deploy_protocol_vault(
                w3=w3, deployer=deployer, asset=asset, name=name, symbol=_share_symbol(name)
            )
            Protocol.objects.update_or_create(chain=chain, name=name, defaults={"address": address})
            addresses[name] = address
            say(f"deployed ProtocolVault {name!r} at {address}")

    # The vault and its keys: created once, then reused.
    if vault is None:
        with transaction.atomic():
            manager = key_manager()
            vault = Vault.objects.create(
                vault_id=vault_id,
                chain=chain,
                account=manager.create_key(purpose=KeyPurpose.RELAYER, label=f"{vault_id} account"),
                operator=manager.create_key(purpose=KeyPurpose.OPERATOR, label=f"{vault_id} operator"),
                asset_address=asset,
            )
            # Sent as this block commits, so the top-up below already sees it on a development chain.
            dev_funding_after_commit(keys=[vault.account], chain=chain)
        say(f"created vault {vault_id}: account {vault.account.address}, operator {vault.operator.address}")
    elif as_address(vault.asset_address) != as_address(asset):
        vault.asset_address = asset
        vault.save(update_fields=["asset_address"])
        say(f"vault {vault_id} now holds asset {asset} (account {vault.account.address})")
    else:
        say(f"reusing vault {vault_id}: account {vault.account.address}")

    if safe_owners:
        _safe_for(w3, vault, deployer=deployer, owners=safe_owners, threshold=safe_threshold, say=say)

    # Funds: topped up to `assets` in total, so a rerun does not mint again, and ETH for gas.
    account = as_address(vault.account.address)
    holder = as_address(vault.holder)
    held = onchain.positions(w3=w3, account=holder, asset=asset, protocols=addresses).total
    mint = max(assets - held, 0)
    if mint:
        onchain.fund_vault_account(w3=w3, asset=asset, account_address=holder, assets=mint, eth=0)
        say(f"funded {holder}: minted {mint} tUSD base units")
    balance = w3.eth.get_balance(account)
    # Refilled only once half is spent: a rerun should not send a dust top-up after every use.
    eth = GAS_ETH - balance if balance < GAS_ETH // 2 else 0
    if eth:
        onchain.fund_vault_account(w3=w3, asset=asset, account_address=account, assets=0, eth=eth)
        say(f"sent {eth} wei to {account} for gas")
    if vault.safe_address:
        return vault  # a Safe approves each deposit in the transaction that makes it

    sent = onchain.approve_protocols(
        w3=w3, chain=chain, account_key=vault.account, asset=asset, spenders=list(addresses.values())
    )
    if sent:
        say(f"approved {len(sent)} protocol vault(s) to spend the vault's tUSD")
    return vault
