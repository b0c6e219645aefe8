"""orchestrator/infra/idempotency.py: a replayed answer's secrets are stored sealed, never in the
clear (issue 14, item 2), and records written before that are sealed by infra's migration 0002."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from orchestrator.automations.models import AutomationConfig
from orchestrator.infra.idempotency import idempotency_reseal
from orchestrator.infra.models import IdempotencyRecord
from orchestrator.infra.sealing import sealed_from_json, sealer
from relayer.keys import KeyManagerError
from tests.support.automations import api_client, signed_config_body
from tests.support.dumps import pg_dump

BASE_URL = "https://executor.example"


@pytest.fixture(autouse=True)
def _destinations(settings: Any) -> None:
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True  # executor.example does not resolve here


def a_client() -> APIClient:
    return api_client("idempotent-author")


def config_body(client: APIClient) -> dict[str, Any]:
    return signed_config_body(client, base_url=BASE_URL)


@pytest.mark.django_db(transaction=True)  # pg_dump reads only what is committed
def test_an_idempotent_config_create_stores_no_hmac_key_yet_a_replay_answers_it() -> None:
    client = a_client()
    body = config_body(client)
    first = client.post("/v1/config", body, format="json", HTTP_IDEMPOTENCY_KEY="config-1")
    assert first.status_code == 201, first.content
    hmac_key = first.json()["hmacKey"]
    assert len(hmac_key) == 64

    dump = pg_dump()
    assert "COPY public.orchestrator_idempotencyrecord" in dump and "config-1" in dump  # the record is there
    assert hmac_key not in dump and hmac_key.upper() not in dump
    assert hmac_key.encode().hex() not in dump  # nor as the bytea of its text

    record = IdempotencyRecord.objects.get(key="config-1")
    assert record.body == first.json() | {"hmacKey": None} and set(record.sealed) == {"hmacKey"}
    assert record.sealed_version == sealer().current_version()

    replay = client.post("/v1/config", body, format="json", HTTP_IDEMPOTENCY_KEY="config-1")
    assert replay.status_code == 201
    assert replay.json() == first.json()  # the same answer, hmacKey included
    assert AutomationConfig.objects.count() == 1


@pytest.mark.django_db
def test_a_sealed_secret_opens_only_for_its_own_record_and_field() -> None:
    client = a_client()
    for key in ("a", "b"):  # two executors, two configs, two records
        assert (
            client.post("/v1/config", config_body(client), format="json", HTTP_IDEMPOTENCY_KEY=key).status_code == 201
        )
    a, b = IdempotencyRecord.objects.get(key="a"), IdempotencyRecord.objects.get(key="b")
    sealed = sealed_from_json(a.sealed["hmacKey"])
    assert sealer().open(sealed, context=f"idempotency:{a.pk}:hmacKey")
    for context in (f"idempotency:{b.pk}:hmacKey", f"idempotency:{a.pk}:id"):
        with pytest.raises(KeyManagerError, match="does not decrypt"):
            sealer().open(sealed, context=context)


@pytest.mark.django_db
def test_migration_0002_seals_the_hmac_keys_stored_in_the_clear_before_it() -> None:
    client = a_client()
    body = config_body(client)
    answer = client.post("/v1/config", body, format="json", HTTP_IDEMPOTENCY_KEY="old").json()
    # As the code before the migration stored it.
    IdempotencyRecord.objects.filter(key="old").update(body=answer, sealed={}, sealed_version=None)
    untouched = IdempotencyRecord.objects.create(
        owner=get_user_model().objects.get(), key="plain", fingerprint="f", status_code=201, body={"id": "x"}
    )

    migration = importlib.import_module("orchestrator.infra.migrations.0002_idempotency_sealed")
    migration.seal_stored_secrets(django_apps, None)

    record = IdempotencyRecord.objects.get(key="old")
    assert record.body == answer | {"hmacKey": None} and set(record.sealed) == {"hmacKey"}
    assert answer["hmacKey"] not in str(record.sealed)
    untouched.refresh_from_db()
    assert untouched.body == {"id": "x"} and untouched.sealed == {} and untouched.sealed_version is None
    replay = client.post("/v1/config", body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert replay.status_code == 201 and replay.json() == answer
    assert idempotency_reseal() == 0  # already under the current master key
