"""GET /v1/vaults, /v1/vaults/{vaultId} and /v1/vaults/{vaultId}/intents."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.vaults import ASSET, emit_intent, make_oracle, make_policy, make_protocol, make_vault, token_client
from vaults.models import ExecutionIntent, IntentStatus, Vault, VaultPolicy

pytestmark = pytest.mark.django_db


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def emit(vault: Vault, policy: VaultPolicy, **fields: Any) -> ExecutionIntent:
    aave = make_protocol("Aave USDC")
    action = {
        "kind": "deposit",
        "protocol": "Aave USDC",
        "address": aave.address,
        "amount": "1000",
        "calldata": "0x6e553f65" + "00" * 64,
    }
    return emit_intent(vault, policy, actions=[action], **fields)


def test_it_lists_the_vaults_by_id() -> None:
    second = make_vault("vault-eth-002", auto_rebalance=False)
    first = make_vault("vault-eth-001", name="Main")
    response = token_client(vaults=[first, second]).get("/v1/vaults")
    assert response.status_code == 200
    data = response.json()["data"]
    assert [v["vaultId"] for v in data] == ["vault-eth-001", "vault-eth-002"]
    assert data[0] == {
        "vaultId": "vault-eth-001",
        "name": "Main",
        "chainId": 31337,
        "account": first.account.address,
        "safe": None,
        "module": None,
        "operator": first.operator.address,
        "asset": ASSET,
        "strategy": "risk-adjusted-yield",
        "autoRebalance": True,
        "intentNonce": 0,
        "lastRebalanceAt": None,
    }
    assert data[1]["autoRebalance"] is False
    assert data[1]["account"] == second.account.address
    assert "policy" not in data[0]


def test_it_lists_no_vaults_as_an_empty_list() -> None:
    assert token_client().get("/v1/vaults").json() == {"data": []}


def test_it_shows_a_vault_with_its_active_policy() -> None:
    vault = make_vault()
    oracle, _ = make_oracle()
    make_policy(vault, max_exposure_pct=Decimal(90))  # retired by the next one
    policy = make_policy(
        vault,
        max_exposure_pct=Decimal("40.5"),
        max_risk_score=3,
        whitelist=[make_protocol("Morpho USDC"), make_protocol("Aave USDC")],
        oracles=[oracle],
        window_start_hour=8,
        window_end_hour=20,
        max_turnover_pct=Decimal(30),
        approval_threshold=Decimal(5000),
    )
    response = token_client(vaults=[vault]).get(f"/v1/vaults/{vault.vault_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["vaultId"] == vault.vault_id
    assert body["operator"] == vault.operator.address
    assert body["policy"] == {
        "version": 2,
        "status": "active",
        "maxExposurePct": "40.5000",
        "whitelist": ["Aave USDC", "Morpho USDC"],
        "maxRiskScore": 3,
        "minIntervalSeconds": 3600,
        "windowStartHour": 8,
        "windowEndHour": 20,
        "maxFeedAgeSeconds": 300,
        "maxTurnoverPct": "30.0000",
        "approvalThreshold": "5000",
        "intentTtlSeconds": 3600,
        "spendingLimit": None,
        "spendingPeriodSeconds": 86400,
        "committedHash": None,
        "oracles": [oracle.address],
        "activatedAt": policy.activated_at.isoformat() if policy.activated_at else None,
    }
    assert body["policy"]["activatedAt"] is not None


def test_it_shows_a_vault_without_an_active_policy_with_policy_null() -> None:
    vault = make_vault()
    response = token_client(vaults=[vault]).get(f"/v1/vaults/{vault.vault_id}")
    assert response.status_code == 200
    assert response.json()["policy"] is None


def test_it_lists_a_vaults_intents_newest_first() -> None:
    vault = make_vault()
    policy = make_policy(vault)
    intents = [emit(vault, policy) for _ in range(3)]
    other = make_vault("vault-eth-002")
    emit(other, make_policy(other))

    response = token_client(vaults=[vault, other]).get(f"/v1/vaults/{vault.vault_id}/intents")

    assert response.status_code == 200
    data = response.json()["data"]
    assert [i["nonce"] for i in data] == [3, 2, 1]
    assert [i["id"] for i in data] == [str(i.id) for i in reversed(intents)]
    newest, stored = data[0], intents[-1]
    assert newest["vaultId"] == vault.vault_id
    assert newest["issuer"] == vault.operator.address
    assert newest["policyVersion"] == 1
    assert newest["allocation"] == {"Aave USDC": "100"}
    assert newest["actions"] == stored.actions
    assert newest["signature"] == stored.signature
    assert newest["digest"] == stored.digest
    assert newest["status"] == IntentStatus.SIGNED
    assert newest["feedId"] is None
    assert newest["proposalId"] is None
    assert newest["error"] is None
    assert newest["executedAt"] is None
    assert datetime.fromisoformat(newest["deadline"]) == stored.deadline


def test_it_lists_no_intents_for_a_vault_that_has_none() -> None:
    vault = make_vault()
    assert token_client(vaults=[vault]).get(f"/v1/vaults/{vault.vault_id}/intents").json() == {"data": []}


@pytest.mark.parametrize("path", ["/v1/vaults/vault-nope", "/v1/vaults/vault-nope/intents"])
def test_it_answers_404_not_found_for_an_unknown_vault(path: str) -> None:
    assert_error(token_client(vaults=[make_vault()]).get(path), 404, "not_found")


@pytest.mark.parametrize("path", ["/v1/vaults", "/v1/vaults/vault-eth-001", "/v1/vaults/vault-eth-001/intents"])
def test_it_answers_401_not_authenticated_without_a_token(path: str) -> None:
    make_vault()
    assert_error(APIClient().get(path), 401, "not_authenticated")


def test_it_answers_401_with_a_token_that_does_not_exist() -> None:
    make_vault()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert_error(client.get("/v1/vaults"), 401, "not_authenticated")


def test_it_refuses_a_write_to_the_vaults_with_405() -> None:
    assert_error(token_client().post("/v1/vaults", {}, format="json"), 405, "method_not_allowed")
