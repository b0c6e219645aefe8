"""The operator's command create_api_client (the engine's `workflows` command: tests/engine/test_commands.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from io import StringIO

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orchestrator.engine.models import Phase
from orchestrator.infra.tokens import token_digest
from tests.factories import WorkflowRunFactory
from tests.support.vaults import make_vault
from vaults.models import VaultGrant

User = get_user_model()


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_it_prints_a_40_character_token_that_authenticates_against_the_api() -> None:
    out, err = run_command("create_api_client", "acme-bot")
    token = out.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", token), out
    assert "acme-bot" in err  # the human sentence goes to stderr, stdout is just the token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.get(f"/v1/workflows/{uuid.uuid4()}")
    assert response.status_code == 404  # authenticated: the run is missing, not the client
    assert response.json()["error"]["code"] == "not_found"

    user = User.objects.get(username="acme-bot")
    assert not user.is_staff
    assert not user.has_usable_password()


def authenticates(token: str) -> bool:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client.get("/v1/vaults").status_code == 200


@pytest.mark.django_db
def test_run_again_for_an_existing_client_it_prints_no_token_and_says_how_to_rotate() -> None:
    first, _ = run_command("create_api_client", "acme-bot")
    second, err = run_command("create_api_client", "acme-bot")
    assert second == ""  # only the hash is stored: the token cannot be shown again
    assert "Existing" in err and "create_api_client acme-bot --rotate" in err
    assert authenticates(first.strip())  # and it is left working
    assert User.objects.filter(username="acme-bot").count() == 1
    assert Token.objects.filter(user__username="acme-bot").count() == 1


@pytest.mark.django_db
def test_rotate_prints_a_new_token_and_the_old_one_stops_working() -> None:
    first, _ = run_command("create_api_client", "acme-bot")
    second, err = run_command("create_api_client", "acme-bot", "--rotate")
    assert re.fullmatch(r"[0-9a-f]{40}\n", second) and second != first
    assert "new token" in err
    assert authenticates(second.strip())
    assert not authenticates(first.strip())
    assert Token.objects.filter(user__username="acme-bot").count() == 1


@pytest.mark.django_db
def test_rotate_for_a_new_client_just_creates_it() -> None:
    out, err = run_command("create_api_client", "acme-bot", "--rotate")
    assert err.startswith("Created") and authenticates(out.strip())


@pytest.mark.django_db
def test_it_strips_the_name_so_padding_does_not_make_a_second_client() -> None:
    run_command("create_api_client", "acme-bot")
    second, err = run_command("create_api_client", "  acme-bot ")
    assert second == "" and "Existing API client 'acme-bot'" in err
    assert User.objects.filter(username__contains="acme-bot").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "   ", "x" * 151])
def test_it_refuses_an_empty_or_overlong_name(name: str) -> None:
    with pytest.raises(CommandError, match="NAME"):
        run_command("create_api_client", name)
    assert not Token.objects.exists()


@pytest.mark.django_db
def test_it_makes_a_staff_client_that_reads_every_run() -> None:
    out, _ = run_command("create_api_client", "ops", "--staff")
    run = WorkflowRunFactory.create(phase=Phase.COMPLETED, step_name="send")  # owned by nobody
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {out.strip()}")
    response = client.get(f"/v1/workflows/{run.id}")
    assert response.status_code == 200
    assert response.json()["id"] == str(run.id)


@pytest.mark.django_db
def test_it_grants_the_vaults_named_with_vault_to_a_new_or_an_existing_client() -> None:
    make_vault("vault-eth-001")
    make_vault("vault-eth-002")
    out, err = run_command("create_api_client", "acme-bot", "--vault", "vault-eth-001")
    assert "Granted: vault-eth-001." in err
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {out.strip()}")
    assert [v["vaultId"] for v in client.get("/v1/vaults").json()["data"]] == ["vault-eth-001"]
    assert client.get("/v1/vaults/vault-eth-002").status_code == 404

    again, err = run_command("create_api_client", "acme-bot", "--vault=vault-eth-001", "--vault=vault-eth-002")
    assert again == "" and "Granted: vault-eth-002." in err  # the first grant was there already
    assert [v["vaultId"] for v in client.get("/v1/vaults").json()["data"]] == ["vault-eth-001", "vault-eth-002"]
    assert VaultGrant.objects.filter(client__username="acme-bot", granted_by=None).count() == 2


@pytest.mark.django_db
def test_it_refuses_an_unknown_vault_before_making_anything() -> None:
    make_vault("vault-eth-001")
    with pytest.raises(CommandError, match="vault-nope"):
        run_command("create_api_client", "acme-bot", "--vault", "vault-eth-001", "--vault", "vault-nope")
    assert not User.objects.filter(username="acme-bot").exists()
    assert not VaultGrant.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_prints_only_the_token_on_the_real_stdout(worker_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_client", "shell-bot"],
        cwd=settings.BASE_DIR,
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9a-f]{40}\n", result.stdout), result.stdout
    # What is stored is the token's hash, not the token.
    assert Token.objects.get(user__username="shell-bot").key == token_digest(result.stdout.strip())
