"""Changing a Safe vault's approvers and quorum: a Safe transaction the current owners sign, on
anvil with the real Safe and real workers; the vault's approvers follow the Safe once it executes."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from web3 import Web3

from approvals.errors import ProposalInvalid
from approvals.safe_owners import owner_change_propose, safe_tx_sign
from approvals.safe_proposals import NotYourWallet, proposal_safe_txs
from approvals.selectors import OPERATORS_GROUP
from approvals.services import proposal_create
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.flows import ENTRIES, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from tests.support.safes import SafeSetup, approver_with_wallet, safe_vault, sign_safe_tx
from vaults import safe as safe_lib
from vaults.models import SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault
from vaults.services.feeds import feed_accept

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]


@pytest.fixture
def setup(anvils: AnvilFactory) -> SafeSetup:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    made = safe_vault(chain)
    feed_accept(payload=signed_feed(made.oracle, ENTRIES))
    return made


def state_of(setup: SafeSetup) -> Any:
    return safe_lib.safe_state(Web3(Web3.HTTPProvider(setup.vault.chain.rpc_url)), setup.vault.safe_address)


def test_the_owners_sign_a_change_of_approvers_and_quorum_and_the_vault_follows_the_safe(
    setup: SafeSetup, workers: Workers
) -> None:
    workers.start(extra_env={**RELAY_ENV, "FLOW_SETTLE_POLL_SECONDS": "1"})
    dave, dave_wallet = approver_with_wallet("dave")
    users = setup.users
    change = owner_change_propose(
        vault=setup.vault, approvers=[users["alice"], users["carol"], dave], threshold=3, proposer=None
    )
    assert change.purpose == SafeTxPurpose.OWNERS and change.nonce == state_of(setup).nonce
    # Only the current owners count: dave is not one yet, and bob signs the rejection side.
    with pytest.raises(Exception, match="not an owner"):
        safe_tx_sign(row=change, signature=sign_safe_tx(dave_wallet, change))
    safe_tx_sign(row=change, signature=sign_safe_tx(setup.wallets["alice"], change))
    with pytest.raises(NotYourWallet):
        safe_tx_sign(row=change, signature=sign_safe_tx(setup.wallets["carol"], change), from_wallet_of=users["alice"])
    assert SafeTransaction.objects.get(pk=change.pk).status == SafeTxStatus.SIGNING
    safe_tx_sign(row=change, signature=sign_safe_tx(setup.wallets["carol"], change), from_wallet_of=users["carol"])
    wait_until(
        lambda: SafeTransaction.objects.filter(pk=change.pk, status=SafeTxStatus.EXECUTED).exists(),
        timeout=90,
        message="the owner change to execute",
    )
    after = state_of(setup)
    assert sorted(after.owners) == sorted(
        [setup.wallets["alice"].address, setup.wallets["carol"].address, dave_wallet.address]
    )
    assert after.threshold == 3
    vault = Vault.objects.get(pk=setup.vault.pk)
    assert sorted(u.username for u in vault.approvers.all()) == ["alice", "carol", "dave"]
    assert vault.approval_quorum == 3
    rejection = SafeTransaction.objects.get(rejects=change)
    assert rejection.status == SafeTxStatus.VOID
    # The next proposal is decided by the new owners.
    operator = get_user_model().objects.create_user("operator", is_staff=True)
    proposal = proposal_create(
        vault=vault, allocation={"Aave USDC": "50", "Compound USDC": "0", "Morpho USDC": "50"}, proposer=operator
    )
    assert proposal.quorum_required == 3
    assert sorted(u.username for u in proposal.approvers.all()) == ["alice", "carol", "dave"]
    main, _ = proposal_safe_txs(proposal)
    assert main is not None and main.nonce == after.nonce


def test_a_change_needs_registered_wallets_a_safe_and_a_sensible_quorum(setup: SafeSetup) -> None:
    nobody = get_user_model().objects.create_user("nobody", is_staff=True)
    with pytest.raises(ProposalInvalid, match="registered no wallet"):
        owner_change_propose(vault=setup.vault, approvers=[setup.users["alice"], nobody], threshold=1)
    with pytest.raises(ProposalInvalid, match="between 1 and 2"):
        owner_change_propose(vault=setup.vault, approvers=[setup.users["alice"], setup.users["bob"]], threshold=3)
    with pytest.raises(ProposalInvalid, match="already"):
        owner_change_propose(vault=setup.vault, approvers=list(setup.users.values()), threshold=2)
    assert not SafeTransaction.objects.filter(purpose=SafeTxPurpose.OWNERS).exists()


def test_operators_propose_a_change_in_the_admin_and_owners_get_sign_buttons(setup: SafeSetup) -> None:
    from django.contrib.auth.models import Group

    operator = get_user_model().objects.create_user("operator", is_staff=True)
    operator.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    browser = Client()
    browser.force_login(operator)
    page = browser.get("/admin/vaults/safetransaction/add/")
    assert page.status_code == 200 and b"Change a Safe vault" in page.content
    answer = browser.post(
        "/admin/vaults/safetransaction/add/",
        {
            "vault": setup.vault.pk,
            "approvers": [setup.users["alice"].pk, setup.users["bob"].pk],
            "quorum": 2,
        },
    )
    change = SafeTransaction.objects.get(purpose=SafeTxPurpose.OWNERS)
    assert answer.status_code == 302 and str(change.pk) in answer["Location"]
    assert change.plan["approvers"] == ["alice", "bob"] and change.plan["threshold"] == 2
    owner = Client()
    owner.force_login(setup.users["alice"])
    detail = owner.get(f"/admin/vaults/safetransaction/{change.pk}/change/")
    assert detail.status_code == 200
    assert b"Sign to approve" in detail.content and b"Sign to reject" in detail.content
    signing = owner.get(f"/admin/vaults/safetransaction/{change.pk}/sign/")
    assert signing.status_code == 200 and change.safe_tx_hash.encode() in signing.content
    # A signature from another wallet than alice's is refused and records nothing.
    refused = owner.post(
        f"/admin/vaults/safetransaction/{change.pk}/sign/",
        {"signature": sign_safe_tx(setup.wallets["bob"], change)},
    )
    assert refused.status_code == 302
    assert not change.signatures.exists()
