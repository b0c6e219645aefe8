"""The automation API over REST, as docs/api.md specifies it: executors, configs, subscriptions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from rest_framework.test import APIClient

from orchestrator.automations.models import AutomationConfig
from orchestrator.automations.services.configs import config_hmac_key
from orchestrator.automations.typed_data import kernel_action_sign
from orchestrator.infra.tokens import api_token_issue
from relayer.models import SigningKey
from tests.factories import ChainFactory
from tests.support.automations import SUBSCRIPTION_KEYS

pytestmark = pytest.mark.django_db
BASE_URL = "https://executor.example"


def client_for(name: str) -> APIClient:
    user = get_user_model().objects.create_user(name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)}")
    return client


def sign(account: LocalAccount, *, url: str = BASE_URL, verify: bool = True, action: str = "CREATE") -> str:
    return kernel_action_sign(account, destination_url=url, verify_payload=verify, action=action)


@pytest.fixture
def author() -> APIClient:
    return client_for("author")


@pytest.fixture
def executor(author: APIClient) -> tuple[str, LocalAccount]:
    account = Account.create()
    response = author.post(
        "/v1/executors",
        {"address": account.address.lower(), "name": "Morpho optimizer", "metadata": {"v": 1}},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["address"] == account.address and body["metadata"] == {"v": 1} and body["createdAt"]
    return body["registryID"], account


def config_body(registry: str, account: LocalAccount, **changes: Any) -> dict[str, Any]:
    body = {
        "registryID": registry,
        "source": {"type": "INTERVAL", "value": 30},
        "destination": {"baseURL": BASE_URL},
        "verifyPayload": True,
        "relayerCount": 2,
        "autosign": False,
        "signature": sign(account),
    }
    body.update(changes)
    return body


@pytest.fixture(autouse=True)
def _served_chains() -> None:
    """Subscriptions and FILTER configs may only name chains the deployment serves."""
    for chain_id, name in ((1, "mainnet"), (8453, "base")):
        ChainFactory.create(chain_id=chain_id, name=name)


@pytest.fixture(autouse=True)
def _destinations(settings: Any) -> None:
    settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS = False
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True  # executor.example does not resolve here


def test_a_config_is_created_with_a_signed_body_and_its_hmac_key_is_shown_once(
    author: APIClient, executor: tuple[str, LocalAccount]
) -> None:
    registry, account = executor
    response = author.post("/v1/config", config_body(registry, account), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"id", "registryID", "executorAddress", "hmacKey", "relayerAddress", "verifyingAddress"}
    assert body["executorAddress"] == account.address and len(body["relayerAddress"]) == 2
    assert len(body["hmacKey"]) == 64 and int(body["hmacKey"], 16) >= 0
    config = AutomationConfig.objects.get(pk=body["id"])
    assert config_hmac_key(config) == body["hmacKey"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT encode(hmac_ciphertext, 'hex') FROM automations_automationconfig")
        assert body["hmacKey"] not in cursor.fetchone()[0]
    assert SigningKey.objects.filter(address__in=body["relayerAddress"], purpose="relayer").count() == 2
    shown = author.get(f"/v1/config/{body['id']}").json()
    assert "hmacKey" not in shown and shown["source"] == {"type": "INTERVAL", "value": 30}
    assert shown["verifyingAddress"] == body["verifyingAddress"]


def test_config_checks_come_in_the_documented_order(author: APIClient, executor: tuple[str, LocalAccount]) -> None:
    registry, account = executor
    malformed = author.post("/v1/config", config_body(registry, account, relayerCount=17), format="json")
    assert malformed.status_code == 400 and malformed.json()["error"]["fields"]["relayerCount"]
    zero = author.post(
        "/v1/config", config_body(registry, account, source={"type": "INTERVAL", "value": 0}), format="json"
    )
    assert zero.status_code == 400
    stranger = Account.create()
    forged = author.post("/v1/config", config_body(registry, account, signature=sign(stranger)), format="json")
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_signature"
    # The signed URL is the baseURL exactly as sent.
    other_url = author.post(
        "/v1/config", config_body(registry, account, destination={"baseURL": BASE_URL + "/"}), format="json"
    )
    assert other_url.json()["error"]["code"] == "invalid_signature"
    assert author.post("/v1/config", config_body(registry, account), format="json").status_code == 201
    replayed = author.post("/v1/config", config_body(registry, account), format="json")
    assert replayed.status_code == 409 and replayed.json()["error"]["code"] == "signature_replayed"
    fresh = config_body(registry, account, verifyPayload=False, signature=sign(account, verify=False))
    exists = author.post("/v1/config", fresh, format="json")
    assert exists.status_code == 409 and exists.json()["error"]["code"] == "config_exists"


def test_destinations_must_be_https_and_public_unless_the_deployment_allows(
    author: APIClient, executor: tuple[str, LocalAccount], settings: Any
) -> None:
    registry, account = executor

    def refusal(url: str) -> dict[str, Any]:
        body = config_body(registry, account, destination={"baseURL": url}, signature=sign(account, url=url))
        response = author.post("/v1/config", body, format="json")
        assert response.status_code == 400
        return dict(response.json()["error"])

    plain = refusal("http://executor.example")
    assert plain == {
        "code": "invalid",
        "message": "baseURL must use https",
        "fields": {"destination.baseURL": "baseURL must use https"},
    }
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = False
    assert "non-public" in refusal("https://127.0.0.1:8443")["message"]


def test_autosign_makes_the_key_manager_hold_an_executor_key(
    author: APIClient, executor: tuple[str, LocalAccount]
) -> None:
    registry, account = executor
    body = author.post("/v1/config", config_body(registry, account, autosign=True), format="json").json()
    assert body["executorAddress"] != account.address
    assert SigningKey.objects.get(address=body["executorAddress"]).purpose == "executor"


def test_a_filter_config_keeps_its_eth_getlogs_filter(author: APIClient, executor: tuple[str, LocalAccount]) -> None:
    registry, account = executor
    topic = "0xDDF252AD1BE2C89B69C2B068FC378DAA952BA7F163C4A11628F55A4DF523B3EF"
    value = {"chainId": 1, "address": "0x" + "ab" * 20, "topics": [topic, None, [topic, topic]], "fromBlock": "latest"}
    created = author.post(
        "/v1/config", config_body(registry, account, source={"type": "FILTER", "value": value}), format="json"
    )
    assert created.status_code == 201, created.content
    shown = author.get(f"/v1/config/{created.json()['id']}").json()["source"]["value"]
    assert shown["topics"][0] == topic.lower() and shown["topics"][1] is None and shown["fromBlock"] == "latest"
    bad = dict(value, topics=["0x1234"])
    refused = author.post(
        "/v1/config",
        config_body(registry, account, source={"type": "FILTER", "value": bad}, signature=sign(account, verify=True)),
        format="json",
    )
    assert refused.status_code == 400


def test_subscriptions_follow_the_trigger_payload_shape_and_cancel(
    author: APIClient, executor: tuple[str, LocalAccount]
) -> None:
    registry, account = executor
    token = "0x" + "cd" * 20
    body = {
        "registryId": registry,
        "chainId": 8453,
        "subAccountAddress": "0x" + "ef" * 20,
        "tokenInputs": {token: "800000000000000"},
        "tokenLimits": {token: "0.0008"},
        "metadata": {"every": "30"},
        "feeToken": token,
        "feeAmount": "0",
    }
    none_yet = author.post("/v1/subscriptions", body, format="json")
    assert none_yet.status_code == 422
    assert none_yet.json() == {"error": {"code": "no_active_config", "message": "The registry has no active config."}}
    author.post("/v1/config", config_body(registry, account), format="json")
    created = author.post("/v1/subscriptions", body, format="json")
    assert created.status_code == 201, created.content
    sub = created.json()
    assert set(sub) == SUBSCRIPTION_KEYS
    assert (sub["status"], sub["duration"], sub["registryId"]) == (2, 30, registry)
    assert sub["subAccountAddress"] == to_checksum_address("0x" + "ef" * 20)
    assert sub["tokenLimits"] == {to_checksum_address(token): "0.0008"}
    cancelled = author.post(f"/v1/subscriptions/{sub['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == 3
    assert author.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == 3


def config_and_subscription(author: APIClient, registry: str, account: LocalAccount) -> tuple[str, str]:
    """A config for the executor and one subscription to it: their ids."""
    config_id = author.post("/v1/config", config_body(registry, account), format="json").json()["id"]
    sub_id = author.post(
        "/v1/subscriptions",
        {"registryID": registry, "chainId": 1, "subAccountAddress": "0x" + "12" * 20},
        format="json",
    ).json()["id"]
    return config_id, sub_id


def test_deleting_a_config_needs_a_delete_signature_and_cancels_its_subscriptions(
    author: APIClient, executor: tuple[str, LocalAccount]
) -> None:
    registry, account = executor
    config_id, sub_id = config_and_subscription(author, registry, account)
    wrong = author.delete(f"/v1/config/{config_id}", {"signature": sign(account)}, format="json")  # a CREATE one
    assert wrong.status_code == 401
    assert wrong.json() == {
        "error": {"code": "invalid_signature", "message": "The signature does not recover to the executor's address."}
    }
    deleted = author.delete(f"/v1/config/{config_id}", {"signature": sign(account, action="DELETE")}, format="json")
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert author.get(f"/v1/subscriptions/{sub_id}").json()["status"] == 3
    again = author.delete(f"/v1/config/{config_id}", {"signature": sign(account, action="DELETE")}, format="json")
    assert again.status_code == 409
    assert again.json() == {"error": {"code": "config_deleted", "message": "This config is already deleted."}}


def test_clients_cannot_see_or_touch_each_others_objects(author: APIClient, executor: tuple[str, LocalAccount]) -> None:
    registry, account = executor
    config_id, sub_id = config_and_subscription(author, registry, account)
    other = client_for("someone-else")
    for path in (f"/v1/executors/{registry}", f"/v1/config/{config_id}", f"/v1/subscriptions/{sub_id}"):
        response = other.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert other.post(f"/v1/subscriptions/{sub_id}/cancel").status_code == 404
    assert (
        other.post(
            "/v1/config",
            config_body(registry, account, signature=sign(account, verify=False), verifyPayload=False),
            format="json",
        ).status_code
        == 404
    )
    assert APIClient().get(f"/v1/config/{config_id}").status_code == 401
