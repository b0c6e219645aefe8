"""orchestrator/infra/tokens.py: API tokens are stored as a hash (issue 14, item 2): a database
dump holds no client's credential, the raw token authenticates, the stored hash does not, and
infra's migration 0003 hashes the tokens stored before in the clear."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orchestrator.infra.tokens import api_token_issue, token_digest
from tests.factories import TokenFactory, UserFactory
from tests.support.dumps import pg_dump


def answer(token: str) -> Any:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client.get("/v1/vaults")


@pytest.mark.django_db(transaction=True)  # pg_dump reads only what is committed
def test_a_database_dump_holds_the_hash_of_an_issued_token_never_the_token() -> None:
    user = UserFactory.create(username="dump-client")
    token = api_token_issue(user=user)
    assert len(token) == 40 and token != token_digest(token)

    dump = pg_dump()
    assert "COPY public.authtoken_token" in dump and token_digest(token) in dump  # the row is there
    assert token not in dump and token.upper() not in dump
    assert token.encode().hex() not in dump
    assert answer(token).status_code == 200


@pytest.mark.django_db
def test_the_raw_token_authenticates_and_the_stored_hash_does_not() -> None:
    issued = TokenFactory.create()
    stored = Token.objects.get(user=issued.user).key
    assert stored == token_digest(issued.key) != issued.key

    assert answer(issued.key).status_code == 200
    refused = answer(stored)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
def test_issuing_again_replaces_the_token() -> None:
    user = UserFactory.create()
    first = api_token_issue(user=user)
    second = api_token_issue(user=user)
    assert first != second and Token.objects.filter(user=user).count() == 1
    assert answer(second).status_code == 200 and answer(first).status_code == 401


@pytest.mark.django_db
def test_migration_0003_hashes_the_keys_stored_in_the_clear_and_they_still_authenticate() -> None:
    # As DRF stored them before the migration: the token itself is the key.
    old = [Token.objects.create(user=UserFactory.create()).key for _ in range(2)]
    assert set(Token.objects.values_list("key", flat=True)) == set(old)

    migration = importlib.import_module("orchestrator.infra.migrations.0003_api_tokens_hashed")
    migration.hash_stored_keys(django_apps, None)

    assert set(Token.objects.values_list("key", flat=True)) == {token_digest(key) for key in old}
    assert migration.stored_key_digest(old[0]) == token_digest(old[0])  # the frozen copy agrees
    for key in old:
        assert answer(key).status_code == 200


@pytest.mark.django_db
def test_the_schema_still_describes_drf_token_authentication() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    scheme = schema["components"]["securitySchemes"]["tokenAuth"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "header" and scheme["name"] == "Authorization"
    assert "Token" in scheme["description"]
    assert {"tokenAuth": []} in schema["paths"]["/v1/vaults"]["get"]["security"]


@pytest.mark.django_db
def test_the_admin_lists_tokens_without_keys_and_cannot_add_or_change_one() -> None:
    issued = TokenFactory.create(user__username="listed-client")
    operator = Client()
    operator.force_login(UserFactory.create(superuser=True, username="operator"))

    listing = operator.get("/admin/authtoken/tokenproxy/")
    assert listing.status_code == 200 and "listed-client" in listing.content.decode()
    assert issued.key not in listing.content.decode()
    assert token_digest(issued.key) not in listing.content.decode()
    # Adding here would store a raw key that never authenticates: tokens come from create_api_client.
    assert operator.get("/admin/authtoken/tokenproxy/add/").status_code == 403
    page = operator.get(f"/admin/authtoken/tokenproxy/{issued.user.pk}/change/")
    assert page.status_code == 200 and issued.key not in page.content.decode()  # (its title is the harmless hash)
    assert 'name="_save"' not in page.content.decode()  # read-only

    # Deleting revokes it.
    deleted = operator.post(f"/admin/authtoken/tokenproxy/{issued.user.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302 and not Token.objects.exists()
    assert answer(issued.key).status_code == 401
