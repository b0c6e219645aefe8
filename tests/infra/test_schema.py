"""The OpenAPI schema (/api/schema/) is valid and documents what the views answer: every
success with its serializer, every error status with the one error body. The live app is held
to it by tests/e2e/test_openapi_fuzz.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from eth_utils import to_checksum_address

from orchestrator.automations.bodies import AddressField, SourceSerializer
from orchestrator.infra.schema import json_whole_number
from orchestrator.infra.validation import WholeNumberField
from vaults.services.feeds import feed_parse

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture
def schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]


def test_the_schema_validates_without_a_warning(tmp_path: Path) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_every_operation_documents_its_answers_and_its_errors_with_the_error_body(schema: dict[str, Any]) -> None:
    operations = _operations(schema)
    assert len(operations) >= 19  # every /v1/ operation, none left out for want of a serializer
    for path, method, op in operations:
        name = f"{method.upper()} {path}"
        statuses = {int(s) for s in op["responses"]}
        assert {401, 406} <= statuses, name
        if "requestBody" in op:
            assert {400, 413, 415} <= statuses, name
        if any(p["name"] == "Idempotency-Key" for p in op.get("parameters", [])):
            assert {400, 409} <= statuses, name
        if "{" in path:
            assert 404 in statuses, name
        successes = [s for s in statuses if s < 400]
        assert len(successes) == 1, name
        for status, answer in op["responses"].items():
            body = answer["content"]["application/json"]["schema"]
            if int(status) >= 400:
                assert body == {"$ref": ERROR_REF}, (name, status)
            else:
                assert "$ref" in body, (name, status)  # a serializer of its own


def test_the_statuses_the_issue_named(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    assert set(paths["/v1/executors"]["post"]["responses"]) >= {"201", "400", "401", "409", "413", "415"}
    # DELETE answers the deleted config, 200, as docs/api.md says; never the 204 drf-spectacular assumes.
    delete = paths["/v1/config/{config_id}"]["delete"]["responses"]
    assert "204" not in delete
    assert delete["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ConfigOut"}
    # Its body, the signature, is documented and required (drf-spectacular leaves DELETE bodies out).
    body = paths["/v1/config/{config_id}"]["delete"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Delete"}
    assert "registryID" in schema["components"]["schemas"]["SubscriptionRequest"]["required"]


def _resolve(schema: dict[str, Any], node: Any) -> Any:
    """The schema with every local $ref inlined (the components here have no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(schema, schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
        return {k: _resolve(schema, v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(schema, v) for v in node]
    return node


@pytest.mark.parametrize(
    ("path", "body", "valid"),
    [
        ("/v1/executors", {"address": "0x" + "aB" * 20, "name": "Morpho optimizer"}, True),
        ("/v1/executors", {"address": "0x" + "aB" * 20, "name": "  "}, False),
        ("/v1/executors", {"address": "", "name": "x"}, False),
        ("/v1/executors", {"address": "0x" + "ab" * 20, "name": 0}, False),
        (
            "/v1/config",
            {
                "registryID": "7c4b0a32-1d4e-4f8c-9d55-0f7b0f0c2a11",
                "source": {"type": "INTERVAL", "value": 30},
                "destination": {"baseURL": "https://executor.example"},
                "verifyPayload": True,
                "signature": "0x" + "11" * 65,
            },
            True,
        ),
        (
            "/v1/config",
            {
                "registryID": "7c4b0a32-1d4e-4f8c-9d55-0f7b0f0c2a11",
                "source": {"type": "INTERVAL", "value": "30"},
                "destination": {"baseURL": "https://executor.example"},
                "verifyPayload": True,
                "signature": "0x" + "11" * 65,
            },
            False,
        ),
        ("/v1/subscriptions", {"chainId": 31337, "subAccountAddress": "0x" + "ab" * 20}, False),
        (
            "/v1/subscriptions",
            {
                "registryID": "7c4b0a32-1d4e-4f8c-9d55-0f7b0f0c2a11",
                "chainId": 31337,
                "subAccountAddress": "0x" + "ab" * 20,
                "tokenInputs": {"not-a-token": "1"},
            },
            False,
        ),
    ],
)
def test_request_schemas_call_valid_what_the_server_accepts(
    schema: dict[str, Any], path: str, body: dict[str, Any], valid: bool
) -> None:
    request = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    errors = list(jsonschema.Draft202012Validator(_resolve(schema, request)).iter_errors(body))
    assert (not errors) is valid, errors


def test_the_feed_example_is_valid_against_the_feed_schema(schema: dict[str, Any]) -> None:
    content = schema["paths"]["/v1/feeds"]["post"]["requestBody"]["content"]["application/json"]
    for example in content["examples"].values():
        jsonschema.Draft202012Validator(_resolve(schema, content["schema"])).validate(example["value"])


# --- what the schema calls valid, the server takes -----------------------------------------------

MIXED_CASE = "0x" + "aB" * 20  # not a valid EIP-55 checksum, still an address in any case


def test_an_integer_written_3_0_is_an_integer_and_true_or_3_5_is_not() -> None:

    assert [json_whole_number(v) for v in (3, 3.0, True, 3.5, "3", 2.0**60)] == [3, 3, None, None, None, None]
    assert WholeNumberField().run_validation(3.0) == 3
    source = SourceSerializer(data={"type": "INTERVAL", "value": 30.0})
    assert source.is_valid(), source.errors
    assert source.validated_data["value"] == 30 and isinstance(source.validated_data["value"], int)
    assert not SourceSerializer(data={"type": "INTERVAL", "value": 30.5}).is_valid()


def test_addresses_are_taken_in_any_case_checksummed_or_not() -> None:

    assert AddressField().run_validation(MIXED_CASE) == to_checksum_address(MIXED_CASE.lower())
    parsed = feed_parse(
        {
            "oracle": MIXED_CASE,
            "timestamp": "2026-11-23T12:00:00Z",
            "entries": [{"protocol": "Aave USDC", "apy": "0.051", "tvl": "1250000", "risk": 2.0}],
            "signature": "0x" + "11" * 65,
        }
    )
    assert parsed.oracle.lower() == MIXED_CASE.lower() and parsed.entries[0]["risk"] == 2
