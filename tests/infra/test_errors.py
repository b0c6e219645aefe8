"""The API's conventions (docs/api.md, "Conventions"): one error body, token auth, 404 for other
clients' runs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from tests.factories import StepRunFactory, TokenFactory, UserFactory, WorkflowRunFactory

pytestmark = pytest.mark.django_db


def api_client(*, staff: bool = False, name: str | None = None) -> tuple[APIClient, Any]:
    token = TokenFactory.create(user__is_staff=staff, **({"user__username": name} if name else {}))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client, token.user


def make_run(owner: Any, **fields: Any) -> WorkflowRun:
    """A `test.effects` run retrying `no_undo` (step 1) after `reserve` was done."""
    run = WorkflowRunFactory.create(**{"owner": owner, "step_name": "no_undo", "current_step": 1, **fields})
    started = timezone.now() - timedelta(seconds=2)
    StepRunFactory.create(
        run=run,
        index=0,
        name="reserve",
        output={"step": "reserve", "attempt": 1},
        started_at=started,
        finished_at=started + timedelta(milliseconds=15),
    )
    StepRunFactory.create(
        run=run,
        index=1,
        name="no_undo",
        status=StepStatus.RETRY,
        error="no_undo fails on attempt 1",
        started_at=started + timedelta(seconds=1),
        finished_at=started + timedelta(seconds=1, milliseconds=5),
    )
    return run


def url(run_id: object) -> str:
    return f"/v1/workflows/{run_id}"


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body["error"]) <= {"code", "message", "fields"}
    return body


def test_it_answers_401_not_authenticated_without_a_token() -> None:
    owner = UserFactory.create(username="owner")
    run = make_run(owner)
    response = APIClient().get(url(run.id))
    body = assert_error(response, 401, "not_authenticated")
    assert set(body["error"]) == {"code", "message"}


def test_it_answers_401_not_authenticated_with_a_bad_token() -> None:
    owner = UserFactory.create(username="owner")
    run = make_run(owner)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert_error(client.get(url(run.id)), 401, "not_authenticated")


def test_it_answers_401_for_a_malformed_authorization_header() -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token two words")
    assert_error(client.get(url(uuid.uuid4())), 401, "not_authenticated")


def test_it_answers_404_not_found_for_an_unknown_id() -> None:
    client, _ = api_client()
    assert_error(client.get(url(uuid.uuid4())), 404, "not_found")


def test_it_answers_404_not_found_for_an_id_that_is_not_a_uuid() -> None:
    client, _ = api_client()
    assert_error(client.get(url("not-a-uuid")), 404, "not_found")


def test_it_answers_404_for_a_run_owned_by_another_client() -> None:
    _, owner = api_client(name="owner")
    other, _ = api_client(name="other")
    run = make_run(owner)
    assert_error(other.get(url(run.id)), 404, "not_found")


def test_it_answers_404_for_a_run_without_an_owner_to_a_non_staff_client() -> None:
    client, _ = api_client()
    run = make_run(None)
    assert_error(client.get(url(run.id)), 404, "not_found")


def test_it_shows_the_owner_its_run_in_the_documented_shape() -> None:
    client, owner = api_client()
    run = make_run(owner)
    response = client.get(url(run.id))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert {"id", "kind", "phase", "transactionId", "error", "steps"} <= set(body)
    assert body["id"] == str(run.id)
    assert body["kind"] == "test.effects"
    assert body["phase"] == "submitting"
    # null, not "", when there is none (docs/api.md, "Workflows").
    assert body["transactionId"] is None
    assert body["error"] is None
    assert [(s["index"], s["name"], s["status"], s["attempt"]) for s in body["steps"]] == [
        (0, "reserve", "done", 1),
        (1, "no_undo", "retry", 1),
    ]
    assert body["steps"][0]["output"] == {"step": "reserve", "attempt": 1}
    assert body["steps"][1]["error"] == "no_undo fails on attempt 1"


def test_it_shows_the_transaction_id_and_error_when_the_run_has_them() -> None:
    client, owner = api_client()
    run = make_run(owner, phase=Phase.DEAD_LETTER, transaction_id="0xabc", error="no_undo: blocked until released")
    body = client.get(url(run.id)).json()
    assert body["phase"] == "dead-letter"
    assert body["transactionId"] == "0xabc"
    assert body["error"] == "no_undo: blocked until released"


def test_it_shows_a_staff_client_any_run() -> None:
    _, owner = api_client(name="owner")
    staff, _ = api_client(staff=True, name="staff")
    run = make_run(owner)
    orphan = make_run(None)
    assert staff.get(url(run.id)).json()["id"] == str(run.id)
    assert staff.get(url(orphan.id)).json()["id"] == str(orphan.id)


def test_it_answers_an_unknown_v1_path_with_a_json_404_not_an_html_page() -> None:
    client, _ = api_client()
    response = client.get("/v1/no-such-thing")
    assert_error(response, 404, "not_found")
    assert b"<html" not in response.content.lower()


def test_it_answers_an_unknown_v1_path_with_json_even_without_a_token() -> None:
    assert_error(APIClient().get("/v1/no-such-thing/at/all"), 404, "not_found")


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_it_answers_a_wrong_method_with_405_and_the_error_body(method: str) -> None:
    client, owner = api_client()
    run = make_run(owner)
    response = getattr(client, method)(url(run.id), {}, format="json")
    body = assert_error(response, 405, "method_not_allowed")
    assert method.upper() in body["error"]["message"]
    assert "GET" in response["Allow"]


def test_it_serves_the_openapi_schema_and_the_docs_page() -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/v1/workflows/{run_id}" in schema.json()["paths"]
    docs = APIClient().get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()


def test_it_answers_healthz_without_a_token() -> None:
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_it_gives_every_response_an_x_request_id() -> None:
    first = APIClient().get("/healthz")
    second = APIClient().get(url(uuid.uuid4()))
    assert first["X-Request-ID"] and second["X-Request-ID"]
    assert first["X-Request-ID"] != second["X-Request-ID"]


def test_it_echoes_an_incoming_x_request_id() -> None:
    client, _ = api_client()
    response = client.get(url(uuid.uuid4()), HTTP_X_REQUEST_ID="trace-1234")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "trace-1234"
    assert APIClient().get("/healthz", HTTP_X_REQUEST_ID="abc-42")["X-Request-ID"] == "abc-42"


def test_it_replaces_an_unusable_incoming_x_request_id() -> None:
    response = APIClient().get("/healthz", HTTP_X_REQUEST_ID="x" * 65)
    assert response["X-Request-ID"] and response["X-Request-ID"] != "x" * 65
