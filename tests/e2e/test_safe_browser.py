"""Flow B on a Safe vault in a real browser: two owners approve in the admin by signing the Safe
transaction with their wallets (an EIP-1193 provider injected into Chromium, backed by their test
keys), the third does nothing, and a real worker sends the one execTransaction to anvil."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser, expect

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs
from approvals.services import proposal_create
from relayer.models import RelayTransaction
from tests.conftest import ARTIFACTS, AnvilFactory, Workers, wait_until
from tests.e2e.test_approval_browser import PASSWORD, browser, log_in, log_out, server  # noqa: F401  (fixtures)
from tests.support.flows import ENTRIES, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from tests.support.safes import KEYS, safe_vault
from tests.support.wallets import install_test_wallet
from vaults import onchain
from vaults.models import Protocol, SafeTxStatus
from vaults.services.feeds import feed_accept

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]

CHANGELIST = "/admin/approvals/rebalanceproposal/"


def test_two_owners_sign_in_the_browser_and_the_safe_executes_the_rebalance(
    server: Any,  # noqa: F811
    browser: Browser,  # noqa: F811
    workers: Workers,
    anvils: AnvilFactory,
) -> None:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    setup = safe_vault(chain)
    for user in setup.users.values():
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    feed_accept(payload=signed_feed(setup.oracle, ENTRIES))
    workers.start(extra_env={**RELAY_ENV, "FLOW_SETTLE_POLL_SECONDS": "1"})
    operator = get_user_model().objects.create_user("operator", is_staff=True)
    proposal = proposal_create(
        vault=setup.vault, allocation={"Aave USDC": "40", "Compound USDC": "0", "Morpho USDC": "60"}, proposer=operator
    )
    main, _ = proposal_safe_txs(proposal)
    assert main is not None
    base = server.url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    for name in ("alice", "bob"):
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(20_000)
        assert install_test_wallet(page, KEYS[name]) == setup.wallets[name].address
        log_in(page, base, name)
        page.goto(f"{base}{CHANGELIST}{proposal.pk}/change/")
        expect(page.locator("body")).to_contain_text(main.safe_tx_hash)
        page.click("#approve-button")
        # What will be signed, before the wallet is asked: the actions, the allocation, the check.
        expect(page.locator("h1")).to_contain_text(f"Sign to approve {proposal.proposal_id}")
        expect(page.locator("#safe-actions")).to_contain_text("deposit")
        expect(page.locator("#safe-allocation")).to_contain_text("Morpho USDC")
        expect(page.locator("#safe-compliance")).to_contain_text("Passes every rule")
        expect(page.locator("#safe-tx-hash")).to_have_text(main.safe_tx_hash)
        if name == "alice":
            page.screenshot(path=str(ARTIFACTS / "safe-signing.png"), full_page=True)
        page.click("#sign-button")
        expect(page.locator("ul.messagelist")).to_contain_text(f"Your signature to approve {proposal.proposal_id}")
        log_out(page)
        page.close()
        if name == "alice":
            assert main.signatures.count() == 1
            assert not RelayTransaction.objects.filter(to=setup.vault.safe_address).exists()

    done = wait_until(
        lambda: RebalanceProposal.objects.filter(pk=proposal.pk, status=ProposalStatus.EXECUTED).first(),
        timeout=120,
        message="the Safe to execute the proposal",
    )
    assert done.status == ProposalStatus.EXECUTED
    main.refresh_from_db()
    assert main.status == SafeTxStatus.EXECUTED
    assert sorted(main.signatures.values_list("signer__username", flat=True)) == ["alice", "bob"]
    assert RelayTransaction.objects.filter(to=setup.vault.safe_address).count() == 1
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=chain)}
    from web3 import Web3

    held = onchain.positions(
        w3=Web3(Web3.HTTPProvider(chain.rpc_url)),
        account=setup.vault.safe_address,
        asset=setup.vault.asset_address,
        protocols=protocols,
    )
    assert held.by_protocol["Morpho USDC"] == held.total * 60 // 100
    assert held.by_protocol["Aave USDC"] == held.total * 40 // 100
