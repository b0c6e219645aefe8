"""Helpers for the automation tests: an API client, an executor server registered with a signed
config, subscriptions, a beat process, and reading the logs back over the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from eth_account import Account
from rest_framework.test import APIClient
from web3 import Web3

from orchestrator.automations.typed_data import kernel_action_sign
from orchestrator.devtools import processes
from orchestrator.infra.tokens import api_token_issue
from orchestrator.operations.schedules import ensure_periodic_tasks
from tests.conftest import ARTIFACTS
from tests.support.executor_server import ExecutorServer

# The subscription object's fields (docs/api.md, "Subscriptions").
SUBSCRIPTION_KEYS = {
    "id",
    "registryId",
    "chainId",
    "subAccountAddress",
    "status",
    "duration",
    "tokenInputs",
    "tokenLimits",
    "metadata",
    "feeToken",
    "feeAmount",
    "commitHash",
    "createdAt",
    "executionPath",
    "moduleAddress",
    "validatorAddress",
}

# The executor server listens on 127.0.0.1 over plain http: allowed in tests only.
LOCAL_DESTINATIONS = {"AUTOMATION_ALLOW_INSECURE_DESTINATIONS": "1", "AUTOMATION_ALLOW_PRIVATE_DESTINATIONS": "1"}


def api_client(name: str | None = None) -> APIClient:
    user = get_user_model().objects.create_user(name or f"author-{uuid.uuid4().hex[:8]}")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)}")
    return client


@dataclass
class Automation:
    client: APIClient
    server: ExecutorServer
    registry: str
    config: dict[str, Any]

    @property
    def hmac_key(self) -> str:
        return str(self.config["hmacKey"])

    def subscribe(self, *, sub_account: str | None = None, chain_id: int = 31337, **fields: Any) -> dict[str, Any]:
        body = {
            "registryID": self.registry,
            "chainId": chain_id,
            "subAccountAddress": sub_account or Web3.to_checksum_address("0x" + uuid.uuid4().hex + "0" * 8),
            "tokenInputs": {},
            "tokenLimits": {},
            "metadata": {"every": "2"},
            "feeToken": "",
            "feeAmount": "0",
        } | fields
        response = self.client.post("/v1/subscriptions", body, format="json")
        assert response.status_code == 201, response.content
        return dict(response.json())

    def logs(self, sub_id: str, **query: Any) -> list[dict[str, Any]]:
        response = self.client.get(f"/v1/{sub_id}/logs", query)
        assert response.status_code == 200, response.content
        return list(response.json()["data"])


def signed_config_body(client: APIClient, *, base_url: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Registers a new executor for `client` and returns a POST /v1/config body it signed."""
    account = Account.create()
    response = client.post("/v1/executors", {"address": account.address, "name": "executor"}, format="json")
    assert response.status_code == 201, response.content
    return {
        "registryID": response.json()["registryID"],
        "source": source or {"type": "INTERVAL", "value": 30},
        "destination": {"baseURL": base_url},
        "verifyPayload": True,
        "signature": kernel_action_sign(account, destination_url=base_url, verify_payload=True, action="CREATE"),
    }


def automation_create(
    server: ExecutorServer,
    *,
    source: dict[str, Any],
    client: APIClient | None = None,
    verify: bool = True,
    **fields: Any,
) -> Automation:
    """Registers the server's executor and creates its config (EIP-712 signed by the executor)."""
    client = client or api_client()
    account = server.executor.account
    response = client.post("/v1/executors", {"address": account.address, "name": "test executor"}, format="json")
    assert response.status_code == 201, response.content
    registry = response.json()["registryID"]
    body = {
        "registryID": registry,
        "source": source,
        "destination": {"baseURL": server.url},
        "verifyPayload": verify,
        "relayerCount": 1,
        "signature": kernel_action_sign(account, destination_url=server.url, verify_payload=verify, action="CREATE"),
    } | fields
    response = client.post("/v1/config", body, format="json")
    assert response.status_code == 201, response.content
    config = dict(response.json())
    server.executor.hmac_key = config["hmacKey"]
    return Automation(client=client, server=server, registry=registry, config=config)


def beat_start(env: dict[str, str]) -> processes.ManagedProcess:
    """A real celery beat on the database scheduler. Transactional tests empty the tables, so
    the fixed periodic tasks are put back first."""
    ensure_periodic_tasks()
    log = ARTIFACTS / "logs" / f"beat-{uuid.uuid4().hex[:8]}.log"
    return processes.celery_beat(log_path=log, env=env).start().wait_ready(timeout=60)


def fund(rpc_url: str, *addresses: str, eth: int = 10) -> None:
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    for address in addresses:
        w3.provider.make_request("anvil_setBalance", [address, hex(eth * 10**18)])


def bare_subscription(name: str = "bare") -> Any:
    """An INTERVAL subscription written straight to the tables, with a config nobody can call
    (its hook URL leads nowhere, its HMAC key is empty): for tests of what reads firings."""
    from orchestrator.automations.models import AutomationConfig, Executor, Subscription
    from tests.factories import SigningKeyFactory, UserFactory

    owner = UserFactory.create()
    executor = Executor.objects.create(address="0x" + "11" * 20, name=name, owner=owner)
    config = AutomationConfig.objects.create(
        executor=executor,
        source_type="INTERVAL",
        interval_seconds=30,
        base_url="http://127.0.0.1:9",
        hmac_version=1,
        hmac_nonce=b"",
        hmac_ciphertext=b"",
        verifying_key=SigningKeyFactory.create(purpose="validator"),
    )
    return Subscription.objects.create(config=config, chain_id=31337, sub_account_address="0x" + "22" * 20, owner=owner)
