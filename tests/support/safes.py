"""Helpers for tests of Safe vaults: approvers with wallets (registered through the real
Sign-In with Ethereum path), a vault held by a Safe they own, and signatures made as a wallet
makes them (eth_signTypedData_v4 of the SafeTx typed data)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from approvals.selectors import APPROVERS_GROUP
from approvals.wallets import wallet_challenge_issue, wallet_register
from relayer.models import Chain
from tests.support.flows import PROTOCOLS
from vaults import safe as safe_lib
from vaults.models import OracleKey, Protocol, SafeTransaction, Vault, VaultPolicy
from vaults.services.bootstrap import chain_bootstrap
from vaults.services.policies import policy_activate, policy_draft

# Three deterministic keys: the approvers' wallets (owners of the Safe).
KEYS = {name: "0x" + f"{i + 0xA11CE:064x}" for i, name in enumerate(("alice", "bob", "carol", "dave"))}


@dataclass
class SafeSetup:
    vault: Vault
    policy: VaultPolicy
    oracle: LocalAccount
    users: dict[str, Any]
    wallets: dict[str, LocalAccount]


def approver_with_wallet(username: str, *, chain_id: int = 31337, key: str | None = None) -> tuple[Any, LocalAccount]:
    """A staff approver whose wallet is registered by signing the challenge, as a browser would."""
    user = get_user_model().objects.create_user(username, email=f"{username}@example.com", is_staff=True)
    user.groups.add(Group.objects.get(name=APPROVERS_GROUP))
    wallet = Account.from_key(key or KEYS[username])
    challenge = wallet_challenge_issue(
        user=user, address=wallet.address, domain="testserver", uri="http://testserver/", chain_id=chain_id
    )
    from eth_account.messages import encode_defunct

    signature = wallet.sign_message(encode_defunct(text=challenge.message)).signature.hex()
    wallet_register(user=user, message=challenge.message, signature="0x" + signature.removeprefix("0x"))
    return user, wallet


def safe_vault(
    chain: Chain,
    *,
    owners: tuple[str, ...] = ("alice", "bob", "carol"),
    threshold: int = 2,
    vault_id: str = "vault-safe-001",
    assets: int = 10**12,
) -> SafeSetup:
    users, wallets = {}, {}
    for name in owners:
        users[name], wallets[name] = approver_with_wallet(name, chain_id=chain.chain_id)
    vault = chain_bootstrap(
        chain=chain,
        vault_id=vault_id,
        protocols=PROTOCOLS,
        assets=assets,
        say=lambda _: None,
        safe_owners=tuple(w.address for w in wallets.values()),
        safe_threshold=threshold,
    )
    oracle = Account.create()
    key = OracleKey.objects.create(address=oracle.address, name=f"oracle for {vault_id}")
    policy = policy_draft(
        vault=vault,
        max_exposure_pct=Decimal(60),
        max_risk_score=5,
        min_interval_seconds=0,
        max_feed_age_seconds=3600,
        max_turnover_pct=Decimal(100),
        approval_threshold=0,
        intent_ttl_seconds=3600,
        whitelist=Protocol.objects.filter(chain=chain, name__in=PROTOCOLS),
        oracles=[key],
    )
    return SafeSetup(vault=vault, policy=policy_activate(policy=policy), oracle=oracle, users=users, wallets=wallets)


def sign_safe_tx(wallet: LocalAccount, row: SafeTransaction) -> str:
    """What a wallet answers to eth_signTypedData_v4 with the row's typed data."""
    typed = safe_lib.SafeTx.from_json(row.tx).typed_data()
    signed = Account.sign_typed_data(wallet.key, full_message=typed)
    return "0x" + signed.signature.hex().removeprefix("0x")


def exec_call(w3: Web3, row: SafeTransaction, signatures: dict[str, str], *, sender: str) -> Any:
    """execTransaction sent straight to the Safe from `sender` (an unlocked node account or one
    the test funds): what anyone could send, bypassing every check of ours."""
    data = safe_lib.exec_transaction_calldata(safe_lib.SafeTx.from_json(row.tx), signatures)
    return {"from": sender, "to": row.vault.safe_address, "data": data}
