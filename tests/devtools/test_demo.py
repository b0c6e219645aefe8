"""`make run`'s approvers: three staff users who can log in and find a proposal waiting for them;
and its API client, granted the demo vault."""

from __future__ import annotations

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import ProposalStatus
from approvals.selectors import APPROVERS_GROUP, proposals_waiting_for
from orchestrator.devtools.demo.approvals import DEMO_ALLOCATION, DEMO_APPROVERS, demo_approvers_setup
from orchestrator.devtools.demo.setup import API_CLIENT, demo_accounts, demo_client_grant
from tests.factories import ProtocolFactory, UserFactory, VaultFactory, VaultPolicyFactory
from vaults.models import VaultGrant
from vaults.selectors import vaults_visible_to

pytestmark = pytest.mark.django_db
User = get_user_model()


def test_it_makes_three_approvers_with_a_proposal_waiting_for_two_of_them_and_only_once() -> None:
    vault = VaultFactory.create()
    for name in DEMO_ALLOCATION:
        ProtocolFactory.create(name=name)
    VaultPolicyFactory.create(vault=vault)
    admin = UserFactory.create(superuser=True, username="admin", password="x")

    demo = demo_approvers_setup(vault=vault, proposer=admin)
    assert set(demo.passwords) == set(DEMO_APPROVERS)
    approvers = []
    for name, password in demo.passwords.items():
        assert password
        user = authenticate(username=name, password=password)
        assert user is not None and user.is_staff and not user.is_superuser
        assert user.groups.filter(name=APPROVERS_GROUP).exists()
        assert list(proposals_waiting_for(user=user)) == [demo.proposal]
        approvers.append(user)
    proposal = demo.proposal
    assert demo.proposal_created and proposal.status == ProposalStatus.PENDING
    assert (proposal.quorum_required, proposal.proposer) == (2, admin)
    assert set(proposal.approvers.all()) == set(approvers) == set(vault.approvers.all())

    again = demo_approvers_setup(vault=vault, proposer=admin)
    assert again.passwords == dict.fromkeys(DEMO_APPROVERS)  # existing users keep their passwords
    assert (again.proposal, again.proposal_created) == (proposal, False)

    client = Client()
    assert client.login(username="approver1", password=demo.passwords["approver1"])
    page = client.get("/admin/approvals/rebalanceproposal/", follow=True)  # lands on ?waiting=me
    assert page.status_code == 200 and proposal.proposal_id in page.content.decode()


def test_the_demo_client_is_granted_the_demo_vault_once() -> None:
    vault = VaultFactory.create()
    admin = UserFactory.create(superuser=True, username="admin")
    demo_accounts()
    client = User.objects.get(username=API_CLIENT)
    assert list(vaults_visible_to(user=client)) == []  # a new client reads nothing

    assert demo_client_grant(vault) is True
    assert demo_client_grant(vault) is False
    assert list(vaults_visible_to(user=client)) == [vault]
    assert VaultGrant.objects.get(client=client).granted_by == admin


def test_each_start_shows_a_new_api_token_that_authenticates() -> None:
    # Only the token's hash is stored: a start cannot show the previous token, so it issues one.
    first = demo_accounts()
    second = demo_accounts()
    assert "client created" in first.note and "client exists, new token" in second.note
    assert first.token != second.token

    def status(token: str) -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client.get("/v1/vaults").status_code

    assert status(second.token) == 200 and status(first.token) == 401
