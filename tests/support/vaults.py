"""Helpers for vault tests: a chain without a node, vaults with real keys, policies, oracles,
signed feeds, intents and API clients."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient

from relayer.keys import key_manager
from relayer.models import Chain
from vaults.models import ExecutionIntent, OracleKey, Protocol, SignedFeed, Vault, VaultPolicy
from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES
from vaults.services.intents import intent_emit
from vaults.services.policies import PolicySnapshot, policy_activate, policy_draft

ASSET = "0x" + "a5" * 20
FEEDS = "/v1/feeds"


def make_chain() -> Chain:
    """Chain 31337; nothing here talks to it, so its RPC URL leads nowhere."""
    chain, _ = Chain.objects.get_or_create(
        chain_id=31337, defaults={"name": "anvil-test", "rpc_url": "http://127.0.0.1:9"}
    )
    return chain


def make_vault(vault_id: str = "vault-eth-001", **fields: Any) -> Vault:
    manager = key_manager()
    values: dict[str, Any] = {
        "vault_id": vault_id,
        "name": f"Vault {vault_id}",
        "chain": make_chain(),
        "account": manager.create_key(purpose="relayer", label=f"{vault_id} account"),
        "operator": manager.create_key(purpose="operator", label=f"{vault_id} operator"),
        "asset_address": ASSET,
    }
    values.update(fields)
    return Vault.objects.create(**values)


def make_protocol(name: str) -> Protocol:
    protocol, _ = Protocol.objects.get_or_create(
        chain=make_chain(), name=name, defaults={"address": Account.create().address}
    )
    return protocol


def policy_values(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "max_exposure_pct": Decimal(50),
        "max_risk_score": 5,
        "approval_threshold": Decimal(10**12),
    }
    values.update(overrides)
    return values


def make_policy(vault: Vault, **overrides: Any) -> VaultPolicy:
    """A new active policy for `vault` (the previous active one, if any, is retired)."""
    return policy_activate(policy=policy_draft(vault=vault, **policy_values(**overrides)))


def emit_intent(vault: Vault, policy: VaultPolicy, **overrides: Any) -> ExecutionIntent:
    """A signed intent of `vault` under `policy`, stored in its own transaction: all of Aave
    USDC, no actions and an hour to live unless `overrides` say otherwise."""
    values: dict[str, Any] = {
        "vault_id": vault.pk,
        "policy": PolicySnapshot.of(policy),
        "allocation": {"Aave USDC": Decimal(100)},
        "actions": [],
        "deadline": timezone.now() + timedelta(hours=1),
    }
    values.update(overrides)
    with transaction.atomic():
        return intent_emit(**values)


def make_oracle(name: str = "oracle", *, active: bool = True) -> tuple[OracleKey, LocalAccount]:
    account = Account.create()
    return OracleKey.objects.create(address=account.address, name=name, active=active), account


def entry(protocol: str = "Aave USDC", apy: str = "0.051", tvl: str = "1250000", risk: int = 2) -> dict[str, Any]:
    return {"protocol": protocol, "apy": apy, "tvl": tvl, "risk": risk}


def sign_feed(account: LocalAccount, message: dict[str, Any]) -> str:
    signable = encode_typed_data(domain_data=FEED_DOMAIN, message_types=FEED_TYPES, message_data=message)
    return "0x" + Account.sign_message(signable, account.key).signature.hex().removeprefix("0x")


def feed_body(
    account: LocalAccount,
    when: datetime,
    entries: list[dict[str, Any]] | None = None,
    *,
    oracle: str | None = None,
    signer: LocalAccount | None = None,
) -> dict[str, Any]:
    """A POST /v1/feeds body: `when` (whole seconds, aware) as RFC 3339, signed by `signer`
    (default: the oracle itself) over the EIP-712 message the service verifies."""
    entries = entries if entries is not None else [entry()]
    address = oracle or account.address
    message = {"oracle": address, "timestamp": int(when.timestamp()), "entries": entries}
    return {
        "oracle": address,
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "entries": entries,
        "signature": sign_feed(signer or account, message),
    }


def token_client(name: str = "feed-bot", *, vaults: Iterable[Vault] = ()) -> APIClient:
    """An API client authenticated with the token `manage.py create_api_client` prints, granted
    `vaults` (`--vault`). Called again for the same name it rotates the token (only its hash is
    stored): an earlier client of that name stops authenticating."""
    out = StringIO()
    granted = [f"--vault={vault.vault_id}" for vault in vaults]
    call_command("create_api_client", name, "--rotate", *granted, stdout=out, stderr=StringIO())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {out.getvalue().strip()}")
    return client


def now_s() -> datetime:
    """Now, in whole seconds (what a feed's RFC 3339 time carries)."""
    return timezone.now().replace(microsecond=0)


def post_feed(client: APIClient, body: Any, **headers: str) -> Any:
    return client.post(FEEDS, body, format="json", **headers)


def assert_refused(response: Any, status: int, code: str) -> dict[str, Any]:
    """The API's error body with `code`, at `status`, and no feed stored. Returns the error."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert SignedFeed.objects.count() == 0, "a refused feed must be stored nowhere"
    error: dict[str, Any] = body["error"]
    return error
