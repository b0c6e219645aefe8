"""Flow B in a real browser: two approvers approve a proposal in the admin (Debian's chromium
driven by Playwright), a real worker executes it on anvil, and an outsider can neither see nor
decide it.

Chromium comes from Debian (`make test` installs it); never `playwright install`, which would
download a browser build of its own."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections
from playwright.sync_api import Browser, Page, expect, sync_playwright
from web3 import Web3

from approvals.models import Approval, Decision, ProposalStatus, RebalanceProposal
from approvals.selectors import APPROVERS_GROUP, OPERATORS_GROUP
from approvals.services import proposal_create
from relayer.models import TxPhase
from tests.conftest import ARTIFACTS, AnvilFactory, Workers, wait_until
from tests.support.flows import ENTRIES, bootstrapped_vault, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from vaults.models import IntentStatus, Vault
from vaults.selectors import intent_relays
from vaults.services.feeds import feed_accept

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]

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
CHANGELIST = "/admin/approvals/rebalanceproposal/"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    # Playwright's sync API keeps an asyncio loop in this thread, and Django then refuses ORM
    # calls from it; the test's own queries are plain synchronous code, so allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        # While Playwright's loop runs in this thread, Django keeps the thread's connections in
        # the loop's context instead of the thread: close them before the loop goes, or they
        # outlive the test and keep the test database from being dropped.
        connections.close_all()


@pytest.fixture
def server(django_db_setup: None, live_server: Any) -> Any:
    """The live server, started after the test database so it stops (and lets go of its
    connection) before the database is dropped."""
    return live_server


def staff(username: str, group: str) -> Any:
    user = get_user_model().objects.create_user(
        username, email=f"{username}@example.com", password=PASSWORD, is_staff=True
    )
    user.groups.add(Group.objects.get(name=group))
    return user


def log_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/admin/login/?next={CHANGELIST}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(username)


def log_out(page: Page) -> None:
    page.click("#logout-form button[type=submit]")
    expect(page.locator("#content")).to_contain_text("Logged out")


def approve_in_browser(page: Page, base: str, username: str, proposal: RebalanceProposal, comment: str) -> None:
    log_in(page, base, username)
    # Approvers land on what waits for their decision.
    expect(page).to_have_url(re.compile(r"\?waiting=me$"))
    expect(page.locator("#result_list")).to_contain_text(proposal.proposal_id)
    page.click(f"#result_list a:text-is('{proposal.proposal_id}')")
    expect(page.locator("#proposal-status")).to_have_text("Pending")
    page.click("#approve-button")
    expect(page.locator("h1")).to_have_text(f"Approve {proposal.proposal_id}?")
    page.fill("textarea[name=comment]", comment)
    page.click("#confirm-button")
    expect(page.locator("ul.messagelist")).to_contain_text(f"You approved {proposal.proposal_id}")
    expect(page.locator("#decisions")).to_contain_text(comment)
    expect(page.locator("#approve-button")).to_have_count(0)  # decided: no buttons any more
    log_out(page)


def test_two_approvers_approve_in_the_browser_and_the_rebalance_executes_on_chain(
    server: Any, browser: Browser, workers: Workers, anvils: AnvilFactory
) -> None:
    rpc_url = anvils.start()
    setup = bootstrapped_vault(make_chain(rpc_url, poll_interval=0.1))
    # A fresh feed for the compliance check, without Flow A rebalancing the vault on its own.
    Vault.objects.filter(pk=setup.vault.pk).update(auto_rebalance=False)
    feed = feed_accept(payload=signed_feed(setup.oracle, ENTRIES))
    workers.start(extra_env=RELAY_ENV)

    approvers = [staff(f"approver{i}", APPROVERS_GROUP) for i in (1, 2, 3)]
    staff("outsider", APPROVERS_GROUP)  # staff and an approver elsewhere, not on this proposal
    operator = staff("operator", OPERATORS_GROUP)
    proposal = proposal_create(
        vault=setup.vault,
        policy=setup.policy,
        allocation={"Aave USDC": "50", "Morpho USDC": "50"},
        proposer=operator,
        approvers=approvers,
        quorum=2,
        feed=feed,
    )
    base = server.url
    proposal_page = f"{base}{CHANGELIST}{proposal.pk}/change/"
    approve_url = f"{base}{CHANGELIST}{proposal.pk}/approve/"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)

    # What an approver sees before deciding: the chain's allocation (all idle), the proposal,
    # a compliant check, and the buttons.
    log_in(page, base, "approver1")
    page.goto(proposal_page)
    expect(page.locator("#allocations tr[data-protocol='idle'] td.current")).to_have_text("100.00%")
    expect(page.locator("#allocations tr[data-protocol='Aave USDC'] td.current")).to_have_text("0.00%")
    expect(page.locator("#allocations tr[data-protocol='Aave USDC'] td.proposed")).to_have_text("50.00%")
    expect(page.locator("#compliance-result")).to_contain_text("Compliant")
    expect(page.locator("#approve-button")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "approval-page.png"), full_page=True)
    log_out(page)

    approve_in_browser(page, base, "approver1", proposal, "Within policy; Morpho and Aave at the cap.")
    assert RebalanceProposal.objects.get(pk=proposal.pk).status == ProposalStatus.PENDING
    approve_in_browser(page, base, "approver2", proposal, "Agreed.")

    # The second approval reached the quorum: the worker executes it. Reload until it shows.
    log_in(page, base, "approver1")

    def executed() -> bool:
        page.goto(proposal_page)
        return page.locator("#proposal-status").get_attribute("data-status") == ProposalStatus.EXECUTED

    wait_until(executed, timeout=90, interval=1.0, message="the proposal page to show it executed")
    expect(page.locator("#proposal-status")).to_have_text("Executed")
    expect(page.locator("#intent-status")).to_have_text("Executed")
    expect(page.locator("#compliance")).to_contain_text("checked at execution")
    expect(page.locator("#allocations tr[data-protocol='Morpho USDC'] td.current")).to_have_text("50.00%")
    expect(page.locator("#allocations tr[data-protocol='idle'] td.current")).to_have_text("0.00%")
    shown = [h.strip() for h in page.locator("#transactions .tx-hash").all_inner_texts()]
    page.screenshot(path=str(ARTIFACTS / "approval-page-executed.png"), full_page=True)
    log_out(page)

    proposal.refresh_from_db()
    assert proposal.intent is not None and proposal.intent.status == IntentStatus.EXECUTED
    assert proposal.intent.proposal_id == proposal.proposal_id
    relayed = intent_relays(intent_id=proposal.intent.pk)
    assert relayed.count() == 2 and all(tx.phase == TxPhase.COMPLETED for tx in relayed)
    assert sorted(shown) == sorted(tx.mined_hash for tx in relayed)
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    for tx_hash in shown:
        assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    decisions = Approval.objects.filter(proposal=proposal)
    assert sorted(decisions.values_list("approver__username", "decision")) == [
        ("approver1", Decision.APPROVE),
        ("approver2", Decision.APPROVE),
    ]

    # The outsider: nothing listed, the page is out of reach, no buttons, and a forged POST
    # (with a valid CSRF token, so only the decision rule can refuse it) is a 403.
    log_in(page, base, "outsider")
    expect(page).to_have_url(re.compile(r"\?waiting=me$"))
    expect(page.locator("#content")).not_to_contain_text(proposal.proposal_id)
    page.goto(f"{base}{CHANGELIST}?waiting=all")
    expect(page.locator("#content")).not_to_contain_text(proposal.proposal_id)
    page.goto(proposal_page)
    expect(page.locator("#approve-button")).to_have_count(0)
    expect(page.locator("#content")).not_to_contain_text("Designated approvers")
    token = page.locator("#logout-form input[name=csrfmiddlewaretoken]").input_value()
    forged = page.request.post(approve_url, form={"csrfmiddlewaretoken": token, "comment": "forged"})
    assert forged.status == 403
    assert "CSRF" not in forged.text()
    assert Approval.objects.filter(proposal=proposal).count() == 2
    assert os.path.getsize(ARTIFACTS / "approval-page.png") > 10_000
