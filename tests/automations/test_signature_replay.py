"""Signature replay (issue 14): a config signature is used once by what it signed (the
executor and the EIP-712 digest), not by its bytes. Another encoding of a used signature (the
high-s twin, v written 0/1, an EIP-155 v) is refused as not canonical (401) or recognised as the
same signature (409); the same holds for executorSignature (docs/api.md, "Signatures")."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient

from orchestrator.automations.models import AutomationConfig, ConfigStatus, Subscription, UsedSignature
from orchestrator.automations.services.answers import answer_review
from orchestrator.automations.typed_data import (
    Executable,
    hmac_hex,
    kernel_action_sign,
    task_answer,
    verifying_signer,
)
from tests.support.automations import api_client
from tests.support.signatures import high_s_twin, recovery_bit, with_v

pytestmark = pytest.mark.django_db
BASE_URL = "https://executor.example"


@pytest.fixture(autouse=True)
def _destinations(settings: Any) -> None:
    settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS = False
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True  # executor.example does not resolve here


@pytest.fixture
def author() -> APIClient:
    return api_client()


@pytest.fixture
def executor(author: APIClient) -> tuple[str, LocalAccount]:
    account = Account.create()
    response = author.post("/v1/executors", {"address": account.address, "name": "x", "metadata": {}}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["registryID"], account


def sign(account: LocalAccount, action: str) -> str:
    return kernel_action_sign(account, destination_url=BASE_URL, verify_payload=True, action=action)


def create(author: APIClient, registry: str, signature: str) -> Any:
    body = {
        "registryID": registry,
        "source": {"type": "INTERVAL", "value": 30},
        "destination": {"baseURL": BASE_URL},
        "verifyPayload": True,
        "relayerCount": 1,
        "autosign": False,
        "signature": signature,
    }
    return author.post("/v1/config", body, format="json")


def delete(author: APIClient, config_id: str, signature: str) -> Any:
    return author.delete(f"/v1/config/{config_id}", {"signature": signature}, format="json")


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.content
    return str(response.json()["error"]["code"])


def test_the_issue_create_delete_and_twins_scenario_is_refused(
    author: APIClient, executor: tuple[str, LocalAccount]
) -> None:
    registry, account = executor
    created, deleted = sign(account, "CREATE"), sign(account, "DELETE")
    first = create(author, registry, created)
    assert first.status_code == 201, first.content
    assert delete(author, first.json()["id"], deleted).status_code == 200

    # The issue: the twin of the first CREATE signature made a second config (201).
    twin = create(author, registry, high_s_twin(created))
    assert error(twin, 401) == "invalid_signature"
    assert "lower half" in twin.json()["error"]["message"]
    # v written 0/1 is accepted as an encoding, so it is the same, used, signature.
    assert error(create(author, registry, with_v(created, recovery_bit(created))), 409) == "signature_replayed"
    eip155 = with_v(created, 37 + recovery_bit(created))
    assert error(create(author, registry, eip155), 401) == "invalid_signature"
    assert AutomationConfig.objects.filter(executor_id=registry).count() == 1

    # The issue's second step needs an active config with the same signed data: put the first
    # back by hand, as the old code's twin config would have been. The twin of the DELETE
    # signature deleted it (200).
    AutomationConfig.objects.filter(pk=first.json()["id"]).update(status=ConfigStatus.ACTIVE, deleted_at=None)
    assert error(delete(author, first.json()["id"], high_s_twin(deleted)), 401) == "invalid_signature"
    short_v = with_v(deleted, recovery_bit(deleted))
    assert error(delete(author, first.json()["id"], short_v), 409) == "signature_replayed"
    assert AutomationConfig.objects.get(pk=first.json()["id"]).status == ConfigStatus.ACTIVE


def test_a_signature_with_v_0_or_1_is_accepted_and_stored_canonical(
    author: APIClient, executor: tuple[str, LocalAccount]
) -> None:
    registry, account = executor
    created = sign(account, "CREATE")
    response = create(author, registry, with_v(created, recovery_bit(created)))
    assert response.status_code == 201, response.content
    used = UsedSignature.objects.get(config_id=response.json()["id"])
    assert (used.signer, used.action, used.signature) == (account.address, "CREATE", created.lower())
    assert used.digest.startswith("0x") and len(used.digest) == 66
    # The 27/28 form of the same signature is the replay now.
    assert error(create(author, registry, created), 409) == "signature_replayed"


def test_a_wrong_length_signature_is_a_malformed_body(author: APIClient, executor: tuple[str, LocalAccount]) -> None:
    registry, account = executor
    created = sign(account, "CREATE")
    assert error(create(author, registry, created[:-2]), 400) == "invalid"


# --- executorSignature ---------------------------------------------------------------------


def test_the_high_s_twin_of_an_executor_signature_is_refused(
    author: APIClient, executor: tuple[str, LocalAccount]
) -> None:
    registry, account = executor
    response = create(author, registry, sign(account, "CREATE"))
    assert response.status_code == 201, response.content
    config = AutomationConfig.objects.select_related("executor").get(pk=response.json()["id"])
    sub = Subscription.objects.create(
        config=config, chain_id=1, sub_account_address=Account.create().address, owner=config.executor.owner
    )
    key = response.json()["hmacKey"]
    executable: Executable = {"callType": 0, "to": Account.create().address, "value": "7", "data": "0x"}
    answer = task_answer(
        hmac_key=key,
        request_id="r-1",
        chain_id=1,
        subaccount=sub.sub_account_address,
        executable=executable,
        signer=account,
    )

    def review(signature: str) -> tuple[str, str, str]:
        changed = answer | {"task": answer["task"] | {"executorSignature": signature}}
        changed["signature"] = hmac_hex(key, f"r-1:{signature}")  # the executor's own HMAC: only the encoding differs
        verdict = answer_review(answer=changed, request_id="r-1", subscription=sub, hmac_key=key)
        return verdict.outcome, verdict.code, verdict.task.get("executorSignature", "")

    signature = answer["task"]["executorSignature"]
    assert review(signature) == ("task", "", signature)
    outcome, code, _ = review(high_s_twin(signature))
    assert (outcome, code) == ("refused", "bad_executor_signature")
    outcome, code, _ = review(with_v(signature, 37 + recovery_bit(signature)))
    assert (outcome, code) == ("refused", "bad_executor_signature")
    assert review(with_v(signature, recovery_bit(signature))) == ("task", "", signature)  # normalised to 27/28


# --- x-verifying-signature -----------------------------------------------------------------


def test_an_executor_reads_x_verifying_signature_with_the_same_parser() -> None:
    key = Account.create()
    signature = "0x" + key.sign_message(encode_defunct(text="r-1")).signature.hex().removeprefix("0x")
    assert verifying_signer("r-1", signature) == key.address
    assert verifying_signer("r-1", with_v(signature, recovery_bit(signature))) == key.address
    assert verifying_signer("r-1", high_s_twin(signature)) == ""
    assert verifying_signer("r-1", with_v(signature, 37 + recovery_bit(signature))) == ""
