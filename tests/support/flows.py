"""Helpers for Flow A tests: a bootstrapped vault with a policy and a signing oracle."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount

from relayer.models import Chain
from vaults.models import OracleKey, Protocol, Vault, VaultPolicy
from vaults.services.bootstrap import chain_bootstrap
from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES
from vaults.services.policies import policy_activate, policy_draft

PROTOCOLS = ("Aave USDC", "Compound USDC", "Morpho USDC")


@dataclass
class Setup:
    vault: Vault
    policy: VaultPolicy
    oracle: LocalAccount


def signed_feed(oracle: LocalAccount, entries: list[dict[str, Any]], when: datetime | None = None) -> dict[str, Any]:
    when = when or timezone.now()
    message = {"oracle": oracle.address, "timestamp": int(when.timestamp()), "entries": entries}
    signable = encode_typed_data(domain_data=FEED_DOMAIN, message_types=FEED_TYPES, message_data=message)
    signature = "0x" + oracle.sign_message(signable).signature.hex().removeprefix("0x")
    return {"oracle": oracle.address, "timestamp": when.isoformat(), "entries": entries, "signature": signature}


def bootstrapped_vault(
    chain: Chain,
    *,
    vault_id: str = "vault-eth-001",
    approval_threshold: int = 10**30,
    max_exposure: str = "50",
    assets: int = 10**12,
) -> Setup:
    vault = chain_bootstrap(chain=chain, vault_id=vault_id, protocols=PROTOCOLS, assets=assets, say=lambda _: None)
    oracle = Account.create()
    key = OracleKey.objects.create(address=oracle.address, name=f"oracle for {vault_id}")
    policy = policy_draft(
        vault=vault,
        max_exposure_pct=Decimal(max_exposure),
        max_risk_score=5,
        min_interval_seconds=0,
        max_feed_age_seconds=300,
        max_turnover_pct=Decimal(100),
        approval_threshold=approval_threshold,
        intent_ttl_seconds=3600,
        whitelist=Protocol.objects.filter(chain=chain, name__in=PROTOCOLS),
        oracles=[key],
    )
    return Setup(vault=vault, policy=policy_activate(policy=policy), oracle=oracle)


# Morpho scores 0.03/(1+0) = 0.03, Aave 0.05/(1+1) = 0.025, Compound 0.04/(1+1) = 0.02:
# with a 50% cap the target is Morpho 50%, Aave 50%, Compound 0%.
ENTRIES = [
    {"protocol": "Aave USDC", "apy": "0.05", "tvl": "1000000", "risk": 1},
    {"protocol": "Compound USDC", "apy": "0.04", "tvl": "2000000", "risk": 1},
    {"protocol": "Morpho USDC", "apy": "0.03", "tvl": "500000", "risk": 0},
]


# Runtime code for a protocol that refuses deposits (set with anvil_setCode): deposit(uint256,
# address) reverts, every other call answers a zero word (so positions still read, as 0).
DEPOSITS_REFUSED = "0x60003560e01c636e553f65146014576020" + "6000f35b60006000fd"
