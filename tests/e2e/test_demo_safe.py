"""The demo's Safe vault (orchestrator/devtools/demo/safe.py) on a real anvil, as `up` makes it
and as a second `up` finds it: the approvers get development wallets, vault-eth-002 is held by a
Safe they own (2 of 3), and one proposal waits for their signatures; a rerun reuses all of it."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from eth_account import Account
from web3 import Web3

from approvals.models import ApproverWallet, ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs
from approvals.selectors import APPROVERS_GROUP
from approvals.services import proposal_create
from approvals.wallets import dev_wallet_key, wallet_of
from orchestrator.devtools.demo.safe import SAFE_ALLOCATIONS, SAFE_VAULT_ID, demo_safe_setup
from orchestrator.devtools.demo.setup import ADMIN_USERNAME, demo_accounts, demo_approvers
from orchestrator.devtools.demo.vaults import DEMO_ORACLE_NAME, demo_setup
from relayer.models import KeyPurpose, SigningKey
from tests.conftest import AnvilFactory
from tests.support.relays import make_chain
from vaults import safe as safe_lib
from vaults.models import OracleKey, PolicyStatus, SafeTxStatus, Vault
from vaults.services.bootstrap import chain_bootstrap

pytestmark = [pytest.mark.django_db(transaction=True)]


def approvers() -> list[Any]:
    group, _ = Group.objects.get_or_create(name=APPROVERS_GROUP)
    users = []
    for name in ("approver1", "approver2", "approver3"):
        user = get_user_model().objects.create_user(name, is_staff=True)
        user.groups.add(group)
        users.append(user)
    return users


def test_the_demo_safe_is_owned_by_the_approvers_development_wallets_and_a_rerun_reuses_it(
    anvils: AnvilFactory,
) -> None:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    template = chain_bootstrap(chain=chain, vault_id="vault-eth-001", say=lambda _: None)
    OracleKey.objects.create(address=Account.create().address, name=DEMO_ORACLE_NAME)
    admin = get_user_model().objects.create_superuser("admin", password="x")
    users = approvers()

    demo = demo_safe_setup(template=template, approvers=users, proposer=admin, oracle_name=DEMO_ORACLE_NAME)

    vault = demo.vault
    assert vault.vault_id == SAFE_VAULT_ID and vault.safe_address and not vault.auto_rebalance
    for user in users:
        assert ApproverWallet.objects.get(user=user).development
        key = dev_wallet_key(user)
        assert key is not None and key.purpose == KeyPurpose.APPROVER and key.address == wallet_of(user)
    state = safe_lib.safe_state(Web3(Web3.HTTPProvider(chain.rpc_url)), vault.safe_address)
    assert sorted(state.owners) == sorted(wallet_of(u) for u in users) and state.threshold == 2
    policy = vault.policies.get(status=PolicyStatus.ACTIVE)
    assert list(policy.oracles.values_list("name", flat=True)) == [DEMO_ORACLE_NAME]
    proposal = demo.proposal
    assert demo.proposal_created and proposal.status == ProposalStatus.PENDING
    assert proposal.proposed_allocations == SAFE_ALLOCATIONS[0]
    assert proposal.quorum_required == 2 and set(proposal.approvers.all()) == set(users)
    main, rejection = proposal_safe_txs(proposal)
    assert main is not None and rejection is not None
    assert main.status == SafeTxStatus.SIGNING and main.nonce == state.nonce

    keys = SigningKey.objects.count()
    again = demo_safe_setup(template=template, approvers=users, proposer=admin, oracle_name=DEMO_ORACLE_NAME)
    assert (again.vault.pk, again.vault.safe_address) == (vault.pk, vault.safe_address)
    assert (again.proposal, again.proposal_created) == (proposal, False)
    assert SigningKey.objects.count() == keys  # no new wallet, account or operator key
    assert vault.policies.count() == 1
    assert RebalanceProposal.objects.filter(vault=vault).count() == 1
    assert Vault.objects.filter(vault_id=SAFE_VAULT_ID).count() == 1


def test_the_safe_is_owned_by_the_three_demo_approvers_whoever_the_waiting_proposal_names(
    anvils: AnvilFactory, settings: Any
) -> None:
    # Kept data from before the Safe vault: the demo vault's waiting proposal was made in the admin
    # for approver1 and a colleague. The Safe is still the three demo approvers', and nobody else
    # is given a key of the server's.
    settings.CHAIN_RPC_URL = anvils.start()
    demo_accounts()
    vault = demo_setup(web_port=8000, say=lambda _: None)
    group, _ = Group.objects.get_or_create(name=APPROVERS_GROUP)
    named = [get_user_model().objects.create_user(name, is_staff=True) for name in ("approver1", "colleague")]
    for user in named:
        user.groups.add(group)
    admin = get_user_model().objects.get(username=ADMIN_USERNAME)
    waiting = proposal_create(
        vault=vault, allocation={"Aave USDC": "60", "Morpho USDC": "40"}, proposer=admin, approvers=named, quorum=2
    )

    demo = demo_approvers(vault)

    assert demo.proposal.startswith(waiting.proposal_id)  # the demo vault's proposal is the one found
    safe_vault = Vault.objects.get(vault_id=SAFE_VAULT_ID)
    owners = {u.username: wallet_of(u) for u in get_user_model().objects.filter(username__startswith="approver")}
    assert sorted(owners) == ["approver1", "approver2", "approver3"] and all(owners.values())
    state = safe_lib.safe_state(Web3(Web3.HTTPProvider(settings.CHAIN_RPC_URL)), safe_vault.safe_address)
    assert sorted(state.owners) == sorted(owners.values()) and state.threshold == 2
    assert wallet_of(named[1]) is None and dev_wallet_key(named[1]) is None
    assert f"(Safe {safe_vault.safe_address}), waiting for 2 of 3 owners' signatures" in demo.safe_proposal
