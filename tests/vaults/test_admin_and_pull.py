"""The vault admin pages, policy activation from the admin, and pull-mode oracles."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.conftest import AnvilFactory
from tests.support.flows import ENTRIES, bootstrapped_vault, signed_feed
from tests.support.relays import make_chain
from vaults.models import OracleKey, PolicyStatus, SignedFeed, VaultPolicy
from vaults.services.oracles import oracles_pull
from vaults.services.policies import policy_draft

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops", password="x"))
    return client


def test_the_vault_admin_shows_the_on_chain_allocation_and_the_active_policy(
    staff: Client, anvils: AnvilFactory
) -> None:
    setup = bootstrapped_vault(make_chain(anvils.start()))
    page = staff.get("/admin/vaults/vault/").content.decode()
    assert "vault-eth-001" in page and "v1" in page
    assert "idle: 100.00%" in page  # all funds idle before the first rebalance
    assert staff.get(f"/admin/vaults/vault/{setup.vault.pk}/change/").status_code == 200


def test_a_policy_draft_is_activated_from_the_admin_and_shows_its_changes(staff: Client, anvils: AnvilFactory) -> None:
    setup = bootstrapped_vault(make_chain(anvils.start()))
    draft = policy_draft(vault=setup.vault, max_exposure_pct=Decimal(40))
    page = staff.get(f"/admin/vaults/vaultpolicy/{draft.pk}/change/").content.decode()
    assert "max_exposure_pct" in page and "50.0000" in page and "40" in page
    response = staff.post(
        "/admin/vaults/vaultpolicy/", {"action": "activate", "_selected_action": [draft.pk]}, follow=True
    )
    assert response.status_code == 200
    assert VaultPolicy.objects.get(pk=draft.pk).status == PolicyStatus.ACTIVE
    assert VaultPolicy.objects.get(pk=setup.policy.pk).status == PolicyStatus.RETIRED
    # Active means frozen: the change page offers no editable field.
    page = staff.get(f"/admin/vaults/vaultpolicy/{draft.pk}/change/").content.decode()
    assert 'name="max_exposure_pct"' not in page


class _Oracle(BaseHTTPRequestHandler):
    body: bytes = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def oracle_server() -> Iterator[tuple[str, type[_Oracle]]]:
    handler = type("Handler", (_Oracle,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/feed", handler
    server.shutdown()


def test_pull_mode_fetches_verifies_and_stores_an_oracles_feed_once(
    anvils: AnvilFactory, oracle_server: tuple[str, type[_Oracle]]
) -> None:
    url, handler = oracle_server
    setup = bootstrapped_vault(make_chain(anvils.start()))
    OracleKey.objects.filter(address=setup.oracle.address).update(pull_url=url)
    handler.body = json.dumps(signed_feed(setup.oracle, ENTRIES)).encode()
    first = oracles_pull()
    assert (first.accepted, first.refused, first.unreachable) == (1, 0, 0)
    again = oracles_pull()  # the same feed served again is not a second feed
    assert (again.accepted, again.refused) == (0, 0)
    assert SignedFeed.objects.count() == 1

    handler.body = b'{"oracle": "nonsense"}'
    assert oracles_pull().refused == 1
    OracleKey.objects.filter(address=setup.oracle.address).update(pull_url="http://127.0.0.1:9/feed")
    assert oracles_pull().unreachable == 1
    assert SignedFeed.objects.count() == 1
