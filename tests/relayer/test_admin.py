"""relayer/admin.py: every page opens for staff, shows no key material, and lets nobody
add, change or delete what only services write. No worker; PostgreSQL and anvil are real."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from relayer.keys import key_manager
from relayer.models import Broadcast, BroadcastKind, Chain, NonceCursor, RelayTransaction, SigningKey, TxPhase
from tests.support.relays import RECEIVER, closed_url, funded_signer, make_chain

User = get_user_model()


@pytest.fixture
def browser() -> Client:
    staff = User.objects.create_superuser(username="operator", email="op@example.com", password="x")
    client = Client()
    client.force_login(staff)
    return client


def relayed(signer: SigningKey, chain: Chain, **fields: Any) -> RelayTransaction:
    values: dict[str, Any] = {
        "idempotency_key": uuid.uuid4().hex,
        "signer": signer,
        "chain": chain,
        "to": RECEIVER,
        "value": 1000,
        "nonce": 0,
        "phase": TxPhase.CONFIRMING,
        "tx_hash": "0x" + "ab" * 32,
        "raw_tx": "0x02f8deadbeef",
        "max_fee_per_gas": 2 * 10**9,
        "max_priority_fee_per_gas": 10**9,
        "correlation_id": uuid.uuid4().hex,
        "error": "replacement transaction underpriced",
    }
    tx = RelayTransaction.objects.create(**{**values, **fields})
    Broadcast.objects.create(
        transaction=tx,
        kind=BroadcastKind.ORIGINAL,
        tx_hash=tx.tx_hash,
        raw_tx=tx.raw_tx,
        nonce=0,
        max_fee_per_gas=tx.max_fee_per_gas,
        max_priority_fee_per_gas=tx.max_priority_fee_per_gas,
    )
    return tx


def page(browser: Client, url: str) -> str:
    response = browser.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def assert_no_key_material(html: str, key: SigningKey) -> None:
    secret = key_manager()._private_key(key).hex()
    lowered = html.lower()
    assert secret not in lowered  # with or without 0x
    assert bytes(key.ciphertext).hex() not in lowered
    assert bytes(key.nonce).hex() not in lowered
    assert "ciphertext" not in lowered


@pytest.mark.django_db
def test_a_superuser_opens_every_relayer_changelist_and_change_page(browser: Client, anvil: str) -> None:
    chain = make_chain(anvil)
    signer = funded_signer(anvil, eth=3)
    cursor = NonceCursor.objects.create(signer=signer, chain=chain, next_nonce=7)
    tx = relayed(signer, chain)

    listing = page(browser, reverse("admin:relayer_relaytransaction_changelist"))
    assert str(tx.id) in listing and signer.address in listing and "replacement transaction" in listing
    detail = page(browser, reverse("admin:relayer_relaytransaction_change", args=[tx.pk]))
    assert tx.tx_hash in detail and "Confirming" in detail
    assert tx.raw_tx not in detail  # the signed bytes are excluded from the page

    keys = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert signer.address in keys and "anvil-test: 3.0000" in keys and "31337: 7" in keys
    key_page = page(browser, reverse("admin:relayer_signingkey_change", args=[signer.pk]))
    assert signer.address in key_page
    for html in (keys, key_page):
        assert_no_key_material(html, signer)

    chains = page(browser, reverse("admin:relayer_chain_changelist"))
    assert anvil in chains
    assert anvil in page(browser, reverse("admin:relayer_chain_change", args=[chain.pk]))

    cursors = page(browser, reverse("admin:relayer_noncecursor_changelist"))
    assert signer.address in cursors
    assert signer.address in page(browser, reverse("admin:relayer_noncecursor_change", args=[cursor.pk]))


@pytest.mark.django_db
def test_the_signing_key_list_marks_a_low_relayer_balance_in_red(browser: Client, anvil: str) -> None:
    make_chain(anvil)
    poor = key_manager().create_key(purpose="relayer")
    html = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert re.search(r'<span style="color:#c62828">anvil-test: 0\.0000</span>', html)
    assert_no_key_material(html, poor)


@pytest.mark.django_db
def test_the_balance_column_shows_a_question_mark_when_the_chain_is_unreachable(browser: Client) -> None:
    make_chain(closed_url(), name="down-chain")
    key = key_manager().create_key(purpose="relayer")
    html = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert key.address in html and "down-chain: ?" in html
    assert_no_key_material(page(browser, reverse("admin:relayer_signingkey_change", args=[key.pk])), key)


@pytest.mark.django_db
def test_signing_keys_cannot_be_added_changed_or_deleted_in_the_admin(browser: Client) -> None:
    make_chain(closed_url())
    key = key_manager().create_key(purpose="relayer")
    changelist = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert reverse("admin:relayer_signingkey_add") not in changelist
    assert browser.get(reverse("admin:relayer_signingkey_add")).status_code == 403
    change = reverse("admin:relayer_signingkey_change", args=[key.pk])
    assert browser.post(change, {"label": "stolen", "purpose": "oracle"}).status_code == 403
    assert browser.get(reverse("admin:relayer_signingkey_delete", args=[key.pk])).status_code == 403
    assert SigningKey.objects.get(pk=key.pk).label == ""


@pytest.mark.django_db
def test_relay_transactions_cannot_be_added_changed_or_deleted_in_the_admin(browser: Client) -> None:
    chain = make_chain(closed_url())
    tx = relayed(key_manager().create_key(purpose="relayer"), chain)
    changelist = page(browser, reverse("admin:relayer_relaytransaction_changelist"))
    assert reverse("admin:relayer_relaytransaction_add") not in changelist
    assert browser.get(reverse("admin:relayer_relaytransaction_add")).status_code == 403
    change = reverse("admin:relayer_relaytransaction_change", args=[tx.pk])
    assert browser.post(change, {"to": RECEIVER, "phase": "completed"}).status_code == 403
    assert browser.get(reverse("admin:relayer_relaytransaction_delete", args=[tx.pk])).status_code == 403
    delete_all = browser.post(
        reverse("admin:relayer_relaytransaction_changelist"),
        {"action": "delete_selected", "_selected_action": [str(tx.pk)], "post": "yes"},
    )
    assert delete_all.status_code in (200, 302)
    assert RelayTransaction.objects.get(pk=tx.pk).phase == TxPhase.CONFIRMING


@pytest.mark.django_db
def test_nonce_cursors_cannot_be_added_in_the_admin(browser: Client) -> None:
    assert browser.get(reverse("admin:relayer_noncecursor_add")).status_code == 403
