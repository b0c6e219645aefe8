"""Signing a Safe vault's proposal with a development wallet (the server holds the approver's
key; development chains only), as the `make run` demo is clicked through: two owners approve
in Chromium with "Sign with your development wallet" and a real worker sends the one
execTransaction to anvil. An owner whose wallet is their own is offered only the browser wallet,
and on a chain that is not a development chain the development wallet signs nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from eth_account import Account
from playwright.sync_api import Browser, expect
from web3 import Web3

from approvals.models import Approval, ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs
from approvals.selectors import APPROVERS_GROUP
from approvals.services import proposal_create
from approvals.wallets import dev_wallet_enable, dev_wallet_key, wallet_of
from relayer.models import Chain, RelayTransaction, TxPhase
from tests.conftest import ARTIFACTS, AnvilFactory, Workers, wait_until
from tests.e2e.test_approval_browser import PASSWORD, browser, log_in, log_out, server  # noqa: F401  (fixtures)
from tests.factories import ChainFactory
from tests.support.flows import ENTRIES, PROTOCOLS, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from tests.support.safes import approver_with_wallet
from vaults import onchain
from vaults import safe as safe_lib
from vaults.models import OracleKey, Protocol, SafeSignature, SafeTxStatus, Vault
from vaults.services.bootstrap import chain_bootstrap
from vaults.services.feeds import feed_accept
from vaults.services.policies import policy_activate, policy_draft

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]

CHANGELIST = "/admin/approvals/rebalanceproposal/"
TARGET = {"Aave USDC": "40", "Compound USDC": "0", "Morpho USDC": "60"}
# A chain id no Safe deployment lists and that is not anvil's 31337: a chain that is not a
# development chain, served by anvil so that everything but that rule would let a signature count.
NOT_DEVELOPMENT_CHAIN_ID = 424242


def dev_approver(username: str, *, dev_chain: Chain) -> Any:
    """A staff approver who can log in, with a development wallet (a key the server holds)."""
    user = get_user_model().objects.create_user(username, email=f"{username}@example.com", password=PASSWORD)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.groups.add(Group.objects.get(name=APPROVERS_GROUP))
    dev_wallet_enable(user=user, chain=dev_chain)
    return user


def safe_vault_of(chain: Chain, owners: list[Any], *, vault_id: str) -> Vault:
    """A vault held by a Safe owned by the users' registered wallets (threshold 2), with an
    active policy and a fresh feed from its oracle."""
    vault = chain_bootstrap(
        chain=chain,
        vault_id=vault_id,
        protocols=PROTOCOLS,
        assets=10**12,
        say=lambda _: None,
        safe_owners=tuple(wallet_of(user) or "" for user in owners),
        safe_threshold=2,
    )
    oracle = Account.create()
    policy = policy_draft(
        vault=vault,
        max_exposure_pct=Decimal(60),
        max_risk_score=5,
        min_interval_seconds=0,
        max_feed_age_seconds=3600,
        max_turnover_pct=Decimal(100),
        approval_threshold=0,
        intent_ttl_seconds=3600,
        whitelist=Protocol.objects.filter(chain=chain, name__in=PROTOCOLS),
        oracles=[OracleKey.objects.create(address=oracle.address, name=f"oracle for {vault_id}")],
    )
    policy_activate(policy=policy)
    feed_accept(payload=signed_feed(oracle, ENTRIES))
    return vault


def operator() -> Any:
    return get_user_model().objects.create_user("operator", is_staff=True)


def positions(vault: Vault) -> dict[str, int]:
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    held = onchain.positions(
        w3=Web3(Web3.HTTPProvider(vault.chain.rpc_url)),
        account=vault.safe_address,
        asset=vault.asset_address,
        protocols=protocols,
    )
    return {**held.by_protocol, "idle": held.idle}


def test_two_owners_sign_with_their_development_wallets_and_the_safe_executes(
    server: Any,  # noqa: F811
    browser: Browser,  # noqa: F811
    workers: Workers,
    anvils: AnvilFactory,
) -> None:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    assert chain.counts_as_development
    alice, bob = dev_approver("alice", dev_chain=chain), dev_approver("bob", dev_chain=chain)
    carol, _ = approver_with_wallet("carol")  # an owner whose wallet is her own
    carol.set_password(PASSWORD)
    carol.save(update_fields=["password"])
    vault = safe_vault_of(chain, [alice, bob, carol], vault_id="vault-devsign-001")
    state = safe_lib.safe_state(Web3(Web3.HTTPProvider(chain.rpc_url)), vault.safe_address)
    assert sorted(state.owners) == sorted(wallet_of(u) for u in (alice, bob, carol)) and state.threshold == 2
    workers.start(extra_env={**RELAY_ENV, "FLOW_SETTLE_POLL_SECONDS": "1"})
    proposal = proposal_create(vault=vault, allocation=TARGET, proposer=operator())
    main, _ = proposal_safe_txs(proposal)
    assert main is not None
    before = positions(vault)
    base = server.url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def open_signing_page(name: str) -> Any:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(20_000)
        log_in(page, base, name)
        page.goto(f"{base}{CHANGELIST}{proposal.pk}/change/")
        page.click("#approve-button")
        expect(page.locator("h1")).to_contain_text(f"Sign to approve {proposal.proposal_id}")
        expect(page.locator("#safe-tx-hash")).to_have_text(main.safe_tx_hash)
        expect(page.locator("#my-wallet")).to_have_text(wallet_of(get_user_model().objects.get(username=name)) or "")
        return page

    # Carol holds her own key: the page offers her browser wallet, never a key of the server's.
    page = open_signing_page("carol")
    expect(page.locator("#sign-button")).to_be_enabled()
    expect(page.locator("#dev-sign-button")).to_have_count(0)
    log_out(page)
    page.close()

    for name in ("alice", "bob"):
        page = open_signing_page(name)
        expect(page.locator("#dev-sign-button")).to_be_visible()
        if name == "alice":
            page.screenshot(path=str(ARTIFACTS / "safe-dev-signing.png"), full_page=True)
        page.click("#dev-sign-button")
        expect(page.locator("ul.messagelist")).to_contain_text(f"Your signature to approve {proposal.proposal_id}")
        log_out(page)
        page.close()
        if name == "alice":
            assert RebalanceProposal.objects.get(pk=proposal.pk).status == ProposalStatus.PENDING
            assert not RelayTransaction.objects.filter(to=vault.safe_address).exists()

    done = wait_until(
        lambda: RebalanceProposal.objects.filter(pk=proposal.pk, status=ProposalStatus.EXECUTED).first(),
        timeout=120,
        message="the Safe to execute the proposal",
    )
    assert done.status == ProposalStatus.EXECUTED
    main.refresh_from_db()
    assert main.status == SafeTxStatus.EXECUTED
    signed = dict(main.signatures.values_list("signer__username", "owner"))
    assert signed == {"alice": wallet_of(alice), "bob": wallet_of(bob)}
    assert sorted(Approval.objects.filter(proposal=proposal).values_list("approver__username", flat=True)) == [
        "alice",
        "bob",
    ]
    execs = list(RelayTransaction.objects.filter(to=vault.safe_address))
    assert len(execs) == 1 and execs[0].signer_id == vault.account_id and execs[0].phase == TxPhase.COMPLETED
    receipt = Web3(Web3.HTTPProvider(chain.rpc_url)).eth.get_transaction_receipt(execs[0].mined_hash)
    assert receipt["status"] == 1
    after = positions(vault)
    total = sum(before.values())
    assert before["Morpho USDC"] == 0 and sum(after.values()) == total
    assert after["Morpho USDC"] == total * 60 // 100 and after["Aave USDC"] == total * 40 // 100


def test_on_a_chain_that_is_not_a_development_chain_the_development_wallet_signs_nothing(
    anvils: AnvilFactory,
) -> None:
    # The users' development wallets come from a development chain; the vault lives on another
    # chain, whose Safe they own: only the chain rule stands between them and a counted signature.
    dev_chain = ChainFactory.create()
    alice, bob = dev_approver("alice", dev_chain=dev_chain), dev_approver("bob", dev_chain=dev_chain)
    rpc_url = anvils.start(extra=["--chain-id", str(NOT_DEVELOPMENT_CHAIN_ID)])
    chain = Chain.objects.create(
        chain_id=NOT_DEVELOPMENT_CHAIN_ID, name="staging", rpc_url=rpc_url, is_development=False, confirmations=1
    )
    assert not chain.counts_as_development
    vault = safe_vault_of(chain, [alice, bob], vault_id="vault-staging-001")
    proposal = proposal_create(vault=vault, allocation=TARGET, proposer=operator())
    main, _ = proposal_safe_txs(proposal)
    assert main is not None and dev_wallet_key(alice) is not None

    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    sign_url = f"{CHANGELIST}{proposal.pk}/sign/approve/"
    page = client.get(sign_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert main.safe_tx_hash in html and 'id="sign-button"' in html
    assert 'id="dev-sign-button"' not in html

    answer = client.post(sign_url, {"dev_wallet": "1"}, follow=True)
    assert answer.status_code == 200
    assert not SafeSignature.objects.filter(safe_tx__vault=vault).exists()
    assert not Approval.objects.filter(proposal=proposal).exists()
    assert RebalanceProposal.objects.get(pk=proposal.pk).status == ProposalStatus.PENDING
    assert "Nothing recorded: Development wallets sign only on a development chain." in answer.content.decode()
