"""Approvers' wallets in a real browser (Debian's chromium driven by Playwright): the admin's
"Your approver wallet" page connects an injected EIP-1193 wallet (tests/support/wallets.py),
which signs the server's EIP-4361 challenge, and the wallet is registered; without a wallet, or
when the user refuses, the page says so in words; on a development chain the server can hold the
key instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections
from eth_account import Account
from eth_account.messages import encode_typed_data
from playwright.sync_api import Browser, Page, expect, sync_playwright

from approvals.models import ApproverWallet
from approvals.selectors import APPROVERS_GROUP
from approvals.wallets import dev_wallet_key
from relayer.models import Chain
from tests.factories import ChainFactory
from tests.support.wallets import install_test_wallet

pytestmark = [pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "correct horse battery staple"
WALLET_PAGE = "/admin/approvals/approverwallet/"
NO_WALLET = "No browser wallet was found"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    # Playwright's sync API keeps an asyncio loop in this thread; the test's ORM calls are plain
    # synchronous code (tests/e2e/test_approval_browser.py says more).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        connections.close_all()


@pytest.fixture
def server(django_db_setup: None, live_server: Any) -> Any:
    """The live server, started after the test database so it stops before the database is dropped."""
    return live_server


@pytest.fixture
def approver() -> Any:
    ChainFactory.create()  # chain 31337, a development chain
    user = get_user_model().objects.create_user(
        "approver1", email="approver1@example.com", password=PASSWORD, is_staff=True
    )
    user.groups.add(Group.objects.get(name=APPROVERS_GROUP))
    return user


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    yield page
    page.close()


def open_wallet_page(page: Page, base: str) -> None:
    """Logs approver1 in and follows the admin index's link to the wallet page."""
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "approver1")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("approver1")
    page.click(f"a[href='{WALLET_PAGE}']")
    expect(page.locator("h1")).to_have_text("Your approver wallet")
    # The heading can be there before the page's script has run (it loads after the HTML).
    page.wait_for_function("window.VaultWallet !== undefined")


def test_an_approver_connects_a_browser_wallet_and_it_is_registered(server: Any, page: Page, approver: Any) -> None:
    key = Account.create()
    address = install_test_wallet(page, key.key.hex())
    open_wallet_page(page, server.url)
    expect(page.locator("#wallet-address")).to_have_text("none")
    page.click("#connect-wallet")
    expect(page.locator("#wallet-status")).to_have_text(f"Registered {address} as your approver wallet.")
    expect(page.locator("#wallet-address")).to_have_text(address)

    wallet = ApproverWallet.objects.get(user=approver)
    assert (wallet.address, wallet.development) == (address, False)
    assert "Register this wallet as approver1's approver wallet" in wallet.message
    assert wallet.message.startswith(f"{server.url.split('://', 1)[1]} wants you to sign in")
    page.reload()
    expect(page.locator("#wallet-address")).to_have_text(address)


def test_the_wallet_api_signs_typed_data_for_other_pages(server: Any, page: Page, approver: Any) -> None:
    key = Account.create()
    address = install_test_wallet(page, key.key.hex())
    open_wallet_page(page, server.url)
    typed = {
        "types": {
            "EIP712Domain": [{"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Note": [{"name": "text", "type": "string"}],
        },
        "primaryType": "Note",
        "domain": {"chainId": 31337, "verifyingContract": "0x" + "11" * 20},
        "message": {"text": "hello"},
    }
    signature = page.evaluate("([a, t]) => window.VaultWallet.signTypedData(a, t)", [address, typed])
    assert Account.recover_message(encode_typed_data(full_message=typed), signature=signature) == address


def test_without_a_browser_wallet_the_page_says_none_was_found(server: Any, page: Page, approver: Any) -> None:
    open_wallet_page(page, server.url)
    assert page.evaluate("window.VaultWallet.available()") is False
    page.click("#connect-wallet")
    expect(page.locator("#wallet-status")).to_contain_text(NO_WALLET)
    assert not ApproverWallet.objects.exists()


def test_a_user_who_refuses_in_the_wallet_is_told_so(server: Any, page: Page, approver: Any) -> None:
    install_test_wallet(page, Account.create().key.hex(), refuse=True)
    open_wallet_page(page, server.url)
    page.click("#connect-wallet")
    expect(page.locator("#wallet-status")).to_have_text("You refused the request in your wallet.")
    assert not ApproverWallet.objects.exists()


def test_a_development_wallet_on_a_development_chain_only(
    server: Any, page: Page, approver: Any, settings: Any
) -> None:
    open_wallet_page(page, server.url)
    page.click("#development-wallet-button")
    expect(page.locator("ul.messagelist")).to_contain_text("a development wallet")
    wallet = ApproverWallet.objects.get(user=approver)
    assert wallet.development is True
    key = dev_wallet_key(approver)
    assert key is not None and key.address == wallet.address
    expect(page.locator("#wallet-address")).to_have_text(wallet.address)
    expect(page.locator("#wallet-kind")).to_contain_text("this server holds its key")

    # A deployment on a chain with real funds offers no such button.
    Chain.objects.create(chain_id=1, name="mainnet", rpc_url="http://127.0.0.1:9")
    settings.CHAIN_ID = 1
    page.reload()
    expect(page.locator("h1")).to_have_text("Your approver wallet")
    expect(page.locator("#development-wallet-button")).to_have_count(0)
