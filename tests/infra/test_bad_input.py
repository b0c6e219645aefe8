"""Bad input is a 4xx with the API's one error body, and stores nothing (docs/api.md, "Bad
input"): integers wider than their column, JSON PostgreSQL cannot keep or the renderer cannot
write, requests Django refuses before any view, other scripts' digits, and chains not served."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from django.db.models import Model
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from orchestrator.automations.models import AutomationConfig, Executor, Subscription
from orchestrator.automations.typed_data import kernel_action_sign
from orchestrator.infra.idempotency import idempotent
from orchestrator.infra.models import IdempotencyRecord
from tests.factories import ChainFactory, TokenFactory

pytestmark = pytest.mark.django_db
BASE_URL = "https://executor.example"
ADDRESS = "0x" + "ab" * 20
BIGINT_MAX = 2**63 - 1


@pytest.fixture(autouse=True)
def _destinations(settings: Any) -> None:
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True  # executor.example does not resolve here


@pytest.fixture
def client() -> APIClient:
    token = TokenFactory.create()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return api


def assert_error(response: Any, status: int = 400, code: str = "invalid") -> dict[str, Any]:
    """The one error body (docs/api.md, "Errors"), as JSON, at `status`."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body["error"]) <= {"code", "message", "fields"}
    return dict(body["error"])


def post_raw(client: APIClient, path: str, raw: str, **headers: Any) -> Any:
    """`raw` is sent as is: json.dumps would write 1e400 as Infinity, which is not JSON."""
    return client.post(path, raw, content_type="application/json", **headers)


def counts() -> dict[str, int]:
    models: list[type[Model]] = [Executor, AutomationConfig, Subscription, IdempotencyRecord]
    return {m.__name__: m._default_manager.count() for m in models}


def register(client: APIClient) -> tuple[str, LocalAccount]:
    account = Account.create()
    response = client.post("/v1/executors", {"address": account.address, "name": "bot"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["registryID"], account


def config_body(registry: str, account: LocalAccount, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "registryID": registry,
        "source": source,
        "destination": {"baseURL": BASE_URL},
        "verifyPayload": True,
        "signature": kernel_action_sign(account, destination_url=BASE_URL, verify_payload=True, action="CREATE"),
    }


@pytest.fixture
def registry(client: APIClient) -> str:
    """An executor with an INTERVAL config, so that subscriptions to it can be made."""
    ChainFactory.create()  # 31337, served
    registry, account = register(client)
    created = client.post(
        "/v1/config", config_body(registry, account, {"type": "INTERVAL", "value": 30}), format="json"
    )
    assert created.status_code == 201, created.content
    return registry


def subscription(registry: str, **changes: Any) -> dict[str, Any]:
    return {"registryID": registry, "chainId": 31337, "subAccountAddress": ADDRESS} | changes


# --- integers wider than their column -----------------------------------------------------------


def test_a_logs_offset_beyond_bigint_is_400_and_the_largest_one_is_an_empty_page(
    client: APIClient, registry: str
) -> None:
    sub_id = client.post("/v1/subscriptions", subscription(registry), format="json").json()["id"]
    error = assert_error(client.get(f"/v1/{sub_id}/logs", {"offset": str(2**63)}))
    assert "offset" in error["fields"]
    assert client.get(f"/v1/{sub_id}/logs", {"offset": str(BIGINT_MAX)}).json() == {"data": []}


@pytest.mark.parametrize(
    "changes",
    [
        {"chainId": 2**63},
        {"chainId": 2**64 + 31337},
        {"feeAmount": 99999999999999999999 * 10**60},  # a number, and wider than the 80-character column
        {"feeAmount": "9" * 81},
        {"feeAmount": str(2**256)},
        {"tokenInputs": {ADDRESS: str(2**256)}},
    ],
    ids=["chainId 2**63", "chainId 2**64+", "feeAmount number", "feeAmount 81 digits", "feeAmount 2**256", "input"],
)
def test_a_subscription_with_an_integer_too_wide_is_400_and_not_stored(
    client: APIClient, registry: str, changes: dict[str, Any]
) -> None:
    before = counts()
    error = assert_error(client.post("/v1/subscriptions", subscription(registry, **changes), format="json"))
    assert set(error["fields"]) == set(changes)
    assert counts() == before


@pytest.mark.parametrize(
    "source",
    [
        {"type": "INTERVAL", "value": 2**31},
        {"type": "INTERVAL", "value": 10**30},
        {"type": "FILTER", "value": {"chainId": 31337, "address": ADDRESS, "fromBlock": 2**63}},
        {"type": "FILTER", "value": {"chainId": 2**63, "address": ADDRESS}},
    ],
    ids=["interval 2**31", "interval 10**30", "fromBlock 2**63", "filter chainId 2**63"],
)
def test_a_config_with_an_integer_too_wide_is_400_and_not_stored(client: APIClient, source: dict[str, Any]) -> None:
    ChainFactory.create()
    registry, account = register(client)
    before = counts()
    error = assert_error(client.post("/v1/config", config_body(registry, account, source), format="json"))
    assert "value" in error["fields"]["source"]
    assert counts() == before
    largest = {"type": "INTERVAL", "value": 2**31 - 1}
    assert client.post("/v1/config", config_body(registry, account, largest), format="json").status_code == 201


# --- JSON that cannot be stored or rendered -----------------------------------------------------

UNSTORABLE = {
    "1e400": '{"a": 1e400}',
    "-1e400": '{"a": [1, -1e400]}',
    "NUL": '{"a": "x\\u0000y"}',
    "NUL in a key": '{"a\\u0000": 1}',
    "lone surrogate": '{"a": "\\ud800"}',
    "lone low surrogate in a key": '{"\\udc00": 1}',
}


@pytest.mark.parametrize("metadata", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_executor_metadata_that_cannot_be_stored_is_400_stores_nothing_and_frees_the_key(
    client: APIClient, metadata: str
) -> None:
    raw = f'{{"address": "{ADDRESS}", "name": "bot", "metadata": {metadata}}}'
    before = counts()
    error = assert_error(post_raw(client, "/v1/executors", raw, HTTP_IDEMPOTENCY_KEY="k1"))
    assert "metadata" in error["fields"]
    assert counts() == before
    # The key was not remembered: the corrected body gets its own answer, and GET works.
    fixed = client.post("/v1/executors", {"address": ADDRESS, "name": "bot"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert fixed.status_code == 201, fixed.content
    assert client.get(f"/v1/executors/{fixed.json()['registryID']}").status_code == 200


@pytest.mark.parametrize("metadata", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_subscription_metadata_that_cannot_be_stored_is_400_and_stores_nothing(
    client: APIClient, registry: str, metadata: str
) -> None:
    raw = json.dumps(subscription(registry, metadata={})).replace('"metadata": {}', f'"metadata": {metadata}')
    before = counts()
    error = assert_error(post_raw(client, "/v1/subscriptions", raw, HTTP_IDEMPOTENCY_KEY="k2"))
    assert "metadata" in error["fields"]
    assert counts() == before
    created = client.post("/v1/subscriptions", subscription(registry), format="json", HTTP_IDEMPOTENCY_KEY="k2")
    assert created.status_code == 201
    assert client.get(f"/v1/subscriptions/{created.json()['id']}").status_code == 200


def test_the_error_names_where_in_the_body_the_bad_value_is(client: APIClient) -> None:
    raw = '{"address": "x", "name": "bot", "metadata": {"deep": {"list": [0, "\\u0000"]}}}'
    error = assert_error(post_raw(client, "/v1/executors", raw))
    assert error["fields"] == {"metadata": {"deep": {"list[1]": "NUL characters (\\u0000) are not allowed."}}}


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/executors", f'{{"address": "{ADDRESS}", "name": "bot\\u0000"}}'),
        ("/v1/executors", f'{{"address": "{ADDRESS}\\u0000", "name": "bot"}}'),
        ("/v1/config", '{"destination": {"baseURL": "https://a.example/\\u0000"}}'),
        ("/v1/feeds", '{"entries": [{"protocol": "Aave\\u0000"}]}'),
        ("/v1/proposals", '{"vaultId": "v\\u0000"}'),
    ],
    ids=["name", "address", "baseURL", "feed protocol", "vaultId"],
)
def test_a_nul_in_any_string_field_is_400(path: str, raw: str) -> None:
    operator = APIClient()  # proposals are for operators only
    operator.credentials(HTTP_AUTHORIZATION=f"Token {TokenFactory.create(user__is_superuser=True).key}")
    before = counts()
    error = assert_error(post_raw(operator, path, raw))
    assert "NUL characters" in json.dumps(error["fields"])
    assert counts() == before


@pytest.mark.parametrize(
    "raw",
    ['{"metadata": ' + "[" * 40 + "]" * 40 + "}", "[" * 100_000 + "]" * 100_000, "[" * 100_000],
    ids=["40 deep", "100,000 deep (crashed the process)", "100,000 opened"],
)
def test_json_nested_too_deep_is_400(client: APIClient, raw: str) -> None:
    assert_error(post_raw(client, "/v1/executors", raw), 400, "malformed_json")
    assert counts()["Executor"] == 0


def test_a_nul_in_the_path_or_query_is_400(client: APIClient) -> None:
    assert_error(client.get("/v1/vaults/vault%00"), 400, "bad_request")
    assert_error(client.get("/v1/proposals/PROP%00"), 400, "bad_request")
    assert_error(client.get("/v1/vaults?q=%00"), 400, "bad_request")


def test_an_idempotency_key_with_a_nul_is_400(client: APIClient) -> None:
    response = client.post("/v1/executors", {"address": ADDRESS, "name": "bot"}, HTTP_IDEMPOTENCY_KEY="a\x00b")
    assert_error(response, 400, "invalid_idempotency_key")
    assert counts()["Executor"] == 0


# --- what Django refuses before a view: JSON too, never an HTML page -----------------------------


def test_more_than_1000_query_parameters_is_400_json(client: APIClient) -> None:
    query = "&".join(f"p{i}=1" for i in range(1001))
    assert_error(client.get(f"/v1/vaults?{query}"), 400, "too_many_parameters")


def test_a_body_over_the_upload_limit_is_413_json(client: APIClient) -> None:
    raw = '{"address": "' + "a" * 5_000_000 + '"}'
    assert_error(post_raw(client, "/v1/executors", raw), 413, "request_too_large")
    assert counts()["Executor"] == 0


def test_an_unknown_host_is_400_json(client: APIClient) -> None:
    assert_error(client.get("/v1/vaults", HTTP_HOST="evil.example"), 400, "disallowed_host")
    assert_error(client.post("/v1/executors", {}, format="json", HTTP_HOST="evil.example"), 400, "disallowed_host")


def test_an_unknown_v1_path_is_404_json(client: APIClient) -> None:
    assert_error(client.get("/v1/no/such/thing"), 404, "not_found")


def test_pages_outside_the_api_keep_their_html_error_pages(client: APIClient) -> None:
    response = client.get("/admin/login/", HTTP_HOST="evil.example")
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")


# --- other scripts' digits, and chains not served ------------------------------------------------

ARABIC_12 = "\u0661\u0662"  # "١٢": int() and str.isdigit() take it


@pytest.mark.parametrize(
    "changes",
    [
        {"feeAmount": ARABIC_12},
        {"chainId": ARABIC_12},
        {"tokenInputs": {ADDRESS: ARABIC_12}},
        {"tokenLimits": {ADDRESS: "0." + ARABIC_12}},
        {"feeAmount": "1_000"},
        {"feeAmount": " 12"},
        {"chainId": True},
        {"chainId": "31337.0"},
    ],
    ids=["feeAmount", "chainId", "tokenInputs", "tokenLimits", "underscore", "space", "true", "31337.0"],
)
def test_numbers_in_other_scripts_or_loose_forms_are_400(
    client: APIClient, registry: str, changes: dict[str, Any]
) -> None:
    before = counts()
    error = assert_error(client.post("/v1/subscriptions", subscription(registry, **changes), format="json"))
    assert set(error["fields"]) == set(changes)
    assert counts() == before


def test_a_logs_limit_in_other_scripts_digits_is_400(client: APIClient, registry: str) -> None:
    sub_id = client.post("/v1/subscriptions", subscription(registry), format="json").json()["id"]
    assert "limit" in assert_error(client.get(f"/v1/{sub_id}/logs", {"limit": "\u0661"}))["fields"]
    assert client.get(f"/v1/{sub_id}/logs", {"limit": "1", "offset": "0"}).status_code == 200


def test_a_subscription_on_a_chain_not_served_is_400_naming_the_served_chains(client: APIClient, registry: str) -> None:
    ChainFactory.create(chain_id=8453, name="base")
    ChainFactory.create(chain_id=10, name="optimism", enabled=False)
    before = counts()
    error = assert_error(client.post("/v1/subscriptions", subscription(registry, chainId=10), format="json"))
    assert error["fields"]["chainId"] == "Chain 10 is not served here; served chains: 8453, 31337."
    assert counts() == before
    assert client.post("/v1/subscriptions", subscription(registry, chainId=8453), format="json").status_code == 201


def test_a_filter_config_on_a_chain_not_served_is_400_naming_the_served_chains(client: APIClient) -> None:
    ChainFactory.create()
    registry, account = register(client)
    source = {"type": "FILTER", "value": {"chainId": 1, "address": ADDRESS}}
    before = counts()
    error = assert_error(client.post("/v1/config", config_body(registry, account, source), format="json"))
    assert error["fields"]["source"]["value"] == "chainId: chain 1 is not served here; served chains: 31337."
    assert counts() == before


# --- an Idempotency-Key remembers successes only -------------------------------------------------


class _Answering(APIView):
    """Creates an executor, then answers the next status of `statuses` (not by raising)."""

    statuses: ClassVar[list[int]] = []

    @idempotent
    def post(self, request: Request) -> Response:
        Executor.objects.create(owner=request.user, address=ADDRESS, name="bot")
        return Response({"answered": True}, status=self.statuses.pop(0))


def test_an_answer_of_4xx_or_5xx_is_not_remembered_and_its_work_is_undone() -> None:
    user = TokenFactory.create().user
    _Answering.statuses[:] = [500, 422, 201]

    def post() -> Any:
        request = APIRequestFactory().post("/", {"a": 1}, format="json", HTTP_IDEMPOTENCY_KEY="same")
        force_authenticate(request, user=user)
        return _Answering.as_view()(request)

    assert post().status_code == 500 and counts()["Executor"] == counts()["IdempotencyRecord"] == 0
    assert post().status_code == 422 and counts()["Executor"] == counts()["IdempotencyRecord"] == 0
    assert post().status_code == 201 and counts()["Executor"] == counts()["IdempotencyRecord"] == 1
    replayed = post()  # statuses is empty now: the view is not called again
    assert (replayed.status_code, replayed.data) == (201, {"answered": True})
    assert counts()["Executor"] == 1
