"""Who reads which vault: two API clients, one granted vault-eth-001 and one granted
vault-eth-002, against every vault, feed and workflow endpoint; staff read everything; grants
made and revoked in the admin, and by the service. Another client's vault is 404 with the body
an unknown vault gets, and lists leave it out."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from orchestrator.engine.models import WorkflowRun
from tests.factories import UserFactory
from tests.support.vaults import (
    emit_intent,
    entry,
    feed_body,
    make_oracle,
    make_policy,
    make_protocol,
    make_vault,
    now_s,
    post_feed,
    token_client,
)
from vaults.models import Vault, VaultGrant
from vaults.selectors import vaults_visible_to
from vaults.services.access import vault_grant, vault_revoke
from vaults.services.rebalance import REBALANCE_WORKFLOW

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def vaults() -> tuple[Vault, Vault]:
    return make_vault("vault-eth-001"), make_vault("vault-eth-002")


@pytest.fixture
def alice(vaults: tuple[Vault, Vault]) -> APIClient:
    return token_client("alice", vaults=[vaults[0]])


@pytest.fixture
def bob(vaults: tuple[Vault, Vault]) -> APIClient:
    return token_client("bob", vaults=[vaults[1]])


def action() -> dict[str, Any]:
    aave = make_protocol("Aave USDC")
    return {"kind": "deposit", "protocol": aave.name, "address": aave.address, "amount": "1", "calldata": "0x"}


def test_each_client_lists_only_the_vaults_granted_to_it(alice: APIClient, bob: APIClient) -> None:
    assert [v["vaultId"] for v in alice.get("/v1/vaults").json()["data"]] == ["vault-eth-001"]
    assert [v["vaultId"] for v in bob.get("/v1/vaults").json()["data"]] == ["vault-eth-002"]
    assert token_client("carol").get("/v1/vaults").json() == {"data": []}  # granted nothing


@pytest.mark.parametrize("path", ["/v1/vaults/{}", "/v1/vaults/{}/intents"])
def test_another_clients_vault_is_404_exactly_as_an_unknown_one(
    vaults: tuple[Vault, Vault], alice: APIClient, bob: APIClient, path: str
) -> None:
    mine, theirs = vaults
    emit_intent(theirs, make_policy(theirs), actions=[action()])

    assert alice.get(path.format(mine.vault_id)).status_code == 200
    refused = alice.get(path.format(theirs.vault_id))
    unknown = alice.get(path.format("vault-nope"))
    assert refused.status_code == unknown.status_code == 404
    assert refused.json() == unknown.json() == {"error": {"code": "not_found", "message": "No vault with that id."}}
    assert bob.get(path.format(theirs.vault_id)).status_code == 200


def test_staff_read_every_vault_without_a_grant(vaults: tuple[Vault, Vault]) -> None:
    staff = UserFactory.create(staff=True)
    assert list(vaults_visible_to(user=staff)) == list(vaults)
    client = APIClient()
    client.force_authenticate(staff)
    assert [v["vaultId"] for v in client.get("/v1/vaults").json()["data"]] == ["vault-eth-001", "vault-eth-002"]
    assert client.get("/v1/vaults/vault-eth-002").status_code == 200


def test_a_revoked_grant_hides_the_vault_from_the_next_request(vaults: tuple[Vault, Vault], alice: APIClient) -> None:
    client = User.objects.get(username="alice")
    assert alice.get("/v1/vaults/vault-eth-001").status_code == 200
    assert vault_revoke(client=client, vault=vaults[0]) is True
    assert alice.get("/v1/vaults/vault-eth-001").status_code == 404
    assert alice.get("/v1/vaults").json() == {"data": []}
    assert vault_revoke(client=client, vault=vaults[0]) is False


def test_granting_twice_keeps_the_first_grant(vaults: tuple[Vault, Vault]) -> None:
    client, operator = UserFactory.create(), UserFactory.create(staff=True)
    first, created = vault_grant(client=client, vault=vaults[0], granted_by=operator)
    again, created_again = vault_grant(client=client, vault=vaults[0])
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk and again.granted_by == operator


# --- feeds and the runs they start -----------------------------------------------------------------


def trusting(vaults: tuple[Vault, Vault]) -> Any:
    """Both vaults trust one oracle; returns its account."""
    oracle, account = make_oracle()
    aave = make_protocol("Aave USDC")
    for vault in vaults:
        make_policy(vault, whitelist=[aave], oracles=[oracle])
    return account


def test_a_posted_feed_answers_and_owns_only_the_runs_of_the_posters_vaults(
    vaults: tuple[Vault, Vault], alice: APIClient, bob: APIClient
) -> None:
    """Both vaults trust the oracle, so the feed starts two runs; alice is told of and owns the
    run of hers, the other starts without an owner (as a pulled feed's does)."""
    account = trusting(vaults)

    response = post_feed(alice, feed_body(account, now_s(), [entry("Aave USDC")]))

    assert response.status_code == 201, response.content
    runs = {run.input["vault"]: run for run in WorkflowRun.objects.filter(kind=REBALANCE_WORKFLOW)}
    mine, theirs = runs[vaults[0].pk], runs[vaults[1].pk]
    assert response.json()["rebalances"] == [str(mine.id)]
    assert mine.owner == User.objects.get(username="alice")
    assert theirs.owner is None
    # Each client reads the rebalance of its own vault, and not the other's.
    assert alice.get(f"/v1/workflows/{mine.id}").status_code == 200
    assert alice.get(f"/v1/workflows/{theirs.id}").json()["error"]["code"] == "not_found"
    assert bob.get(f"/v1/workflows/{theirs.id}").status_code == 200  # granted the vault, did not post
    assert bob.get(f"/v1/workflows/{mine.id}").status_code == 404


def test_a_client_granted_nothing_may_post_a_feed_and_is_told_of_no_run(vaults: tuple[Vault, Vault]) -> None:
    """The oracle's signature, not the token, is what makes a feed count: it still starts the
    rebalances, but the poster sees none of them."""
    account = trusting(vaults)
    response = post_feed(token_client("carol"), feed_body(account, now_s(), [entry("Aave USDC")]))
    assert response.status_code == 201, response.content
    assert response.json()["rebalances"] == []
    assert WorkflowRun.objects.filter(kind=REBALANCE_WORKFLOW, owner__isnull=True).count() == 2


def test_a_staff_poster_owns_and_is_told_of_every_run(vaults: tuple[Vault, Vault]) -> None:
    account = trusting(vaults)
    staff = UserFactory.create(staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    response = post_feed(client, feed_body(account, now_s(), [entry("Aave USDC")]))
    runs = WorkflowRun.objects.filter(kind=REBALANCE_WORKFLOW)
    assert sorted(response.json()["rebalances"]) == sorted(str(run.id) for run in runs)
    assert {run.owner for run in runs} == {staff}


# --- the admin -------------------------------------------------------------------------------------


def admin_client() -> tuple[Client, Any]:
    admin = UserFactory.create(superuser=True, password="pw")
    client = Client()
    assert client.login(username=admin.username, password="pw")
    return client, admin


def test_an_operator_grants_a_vault_in_the_admin_and_is_recorded_as_granting_it(
    vaults: tuple[Vault, Vault],
) -> None:
    web, admin = admin_client()
    client = UserFactory.create(username="acme-bot")

    response = web.post("/admin/vaults/vaultgrant/add/", {"client": client.pk, "vault": vaults[1].pk})

    assert response.status_code == 302, response.content
    grant = VaultGrant.objects.get()
    assert (grant.client, grant.vault, grant.granted_by) == (client, vaults[1], admin)
    assert list(vaults_visible_to(user=client)) == [vaults[1]]
    assert web.get("/admin/vaults/vaultgrant/").status_code == 200
    changed = web.get(f"/admin/vaults/vaultgrant/{grant.pk}/change/")
    assert changed.status_code == 200 and "acme-bot" in changed.content.decode()


def test_the_vault_page_lists_its_grants_and_adds_one_inline(vaults: tuple[Vault, Vault]) -> None:
    web, admin = admin_client()
    vault = vaults[0]
    existing = UserFactory.create(username="reader")
    vault_grant(client=existing, vault=vault)
    newcomer = UserFactory.create(username="newcomer")
    page = web.get(f"/admin/vaults/vault/{vault.pk}/change/")
    assert page.status_code == 200
    assert "API clients that may read this vault" in page.content.decode()
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        {
            "chain": vault.chain_id,
            "account": vault.account_id,
            "operator": vault.operator_id,
            "approvers": [],
            "grants-TOTAL_FORMS": "2",
            "grants-INITIAL_FORMS": "1",
            "grants-MIN_NUM_FORMS": "0",
            "grants-MAX_NUM_FORMS": "1000",
            "grants-0-id": VaultGrant.objects.get().pk,
            "grants-0-vault": vault.pk,
            "grants-0-client": existing.pk,
            "grants-1-vault": vault.pk,
            "grants-1-client": newcomer.pk,
        }
    )
    data.pop("approvers")
    response = web.post(f"/admin/vaults/vault/{vault.pk}/change/", data)
    assert response.status_code == 302, response.context["errors"] if response.context else response.content
    added = VaultGrant.objects.get(client=newcomer)
    assert (added.vault, added.granted_by) == (vault, admin)
    assert VaultGrant.objects.get(client=existing).granted_by is None  # untouched
