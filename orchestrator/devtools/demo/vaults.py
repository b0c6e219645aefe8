"""The demo `make run` brings up: a vault on the local chain, its policy, and an oracle that
the system itself serves (pull mode), so an automated rebalance happens without anyone typing.

The demo oracle's key lives in the key manager like any other key; its feed is served at
/demo/oracle/feed only when DEMO_ORACLE is on (`make run` turns it on; production never)."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

from django.utils import timezone

from relayer.keys import key_manager
from relayer.models import KeyPurpose, SigningKey
from relayer.services.chains import chain_seed_from_env
from vaults.models import OracleKey, PolicyStatus, Protocol, Vault, VaultPolicy
from vaults.services.bootstrap import DEFAULT_PROTOCOLS, chain_bootstrap
from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES
from vaults.services.policies import policy_activate, policy_draft

DEMO_ORACLE_NAME = "Demo oracle"
# Base APY and risk per protocol; the served APYs drift around these so rebalances happen.
DEMO_MARKET = {"Aave USDC": ("0.045", 1), "Compound USDC": ("0.040", 1), "Morpho USDC": ("0.030", 0)}


def demo_setup(*, web_port: int, say: Any = print) -> Vault:
    chain = chain_seed_from_env(overwrite=True)
    vault = chain_bootstrap(chain=chain, vault_id="vault-eth-001", say=say)
    key = SigningKey.objects.filter(purpose=KeyPurpose.ORACLE, label=DEMO_ORACLE_NAME).first()
    if key is None:
        key = key_manager().create_key(purpose=KeyPurpose.ORACLE, label=DEMO_ORACLE_NAME)
    oracle, _ = OracleKey.objects.update_or_create(
        address=key.address,
        defaults={
            "name": DEMO_ORACLE_NAME,
            "active": True,
            "pull_url": f"http://127.0.0.1:{web_port}/demo/oracle/feed",
        },
    )
    demo_policy(vault, oracles=[oracle], approval_threshold=10**30)
    return vault


def demo_policy(vault: Vault, *, oracles: list[OracleKey], approval_threshold: int) -> VaultPolicy:
    """The demo vaults' policy, made active unless the vault has one: the demo protocols, a
    minute between rebalances, the demo oracle; approvers decide above `approval_threshold`."""
    active = vault.policies.filter(status=PolicyStatus.ACTIVE).first()
    if active is not None:
        return active
    draft = policy_draft(
        vault=vault,
        max_exposure_pct=Decimal(60),
        max_risk_score=5,
        min_interval_seconds=60,
        max_feed_age_seconds=300,
        max_turnover_pct=Decimal(100),
        approval_threshold=approval_threshold,
        intent_ttl_seconds=3600,
        whitelist=Protocol.objects.filter(chain_id=vault.chain_id, name__in=DEFAULT_PROTOCOLS),
        oracles=oracles,
    )
    return policy_activate(policy=draft)


def demo_feed() -> dict[str, Any]:
    """A feed signed by the demo oracle key: APYs drift slowly with time."""
    key = SigningKey.objects.get(purpose=KeyPurpose.ORACLE, label=DEMO_ORACLE_NAME)
    now = timezone.now().replace(microsecond=0)
    phase = time.time() / 600
    entries = []
    for i, (name, (apy, risk)) in enumerate(DEMO_MARKET.items()):
        drift = Decimal(str(round(0.01 * math.sin(phase + i * 2.1), 4)))
        entries.append({"protocol": name, "apy": str(Decimal(apy) + drift), "tvl": "1000000", "risk": risk})
    message = {"oracle": key.address, "timestamp": int(now.timestamp()), "entries": entries}
    signature = key_manager().sign_typed_data(key=key, domain=FEED_DOMAIN, types=FEED_TYPES, message=message)
    return {"oracle": key.address, "timestamp": now.isoformat(), "entries": entries, "signature": signature}
