"""The approvers' admin screen: who sees which proposal, who gets the buttons, the confirmation
page and its POST, the operators' add form, and that nothing is edited or deleted here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.messages import SUCCESS, WARNING, get_messages
from django.test import Client

from approvals.models import Approval, Decision, ProposalStatus, RebalanceProposal
from approvals.selectors import APPROVERS_GROUP, OPERATORS_GROUP
from approvals.services import proposal_approve, proposal_create
from tests.support.vaults import make_policy, make_protocol, make_vault
from vaults.models import Protocol, Vault, VaultPolicy

pytestmark = pytest.mark.django_db

User = get_user_model()
CHANGELIST = "/admin/approvals/rebalanceproposal/"
ADD = f"{CHANGELIST}add/"
ALLOCATION = {"Aave USDC": "50", "Morpho USDC": "50"}


def change_url(proposal: RebalanceProposal) -> str:
    return f"{CHANGELIST}{proposal.pk}/change/"


def approve_url(proposal: RebalanceProposal) -> str:
    return f"{CHANGELIST}{proposal.pk}/approve/"


def reject_url(proposal: RebalanceProposal) -> str:
    return f"{CHANGELIST}{proposal.pk}/reject/"


def staff_user(username: str, *groups: str) -> Any:
    user = User.objects.create_user(username, email=f"{username}@example.com", password="pw", is_staff=True)
    user.groups.set(Group.objects.filter(name__in=groups))
    return user


def client_for(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@dataclass
class World:
    vault: Vault
    policy: VaultPolicy
    approvers: list[Any]
    outsider: Any
    operator: Any
    proposal: RebalanceProposal


@pytest.fixture
def world() -> World:
    protocols = [make_protocol(name) for name in ("Aave USDC", "Compound USDC", "Morpho USDC")]
    vault = make_vault()
    policy = make_policy(vault)
    policy.whitelist.set(protocols)
    approvers = [staff_user(f"approver{i}", APPROVERS_GROUP) for i in (1, 2, 3)]
    outsider = staff_user("outsider", APPROVERS_GROUP)
    operator = staff_user("operator", OPERATORS_GROUP)
    proposal = proposal_create(
        vault=vault, policy=policy, allocation=ALLOCATION, proposer=operator, approvers=approvers, quorum=2
    )
    return World(vault, policy, approvers, outsider, operator, proposal)


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def test_the_groups_carry_the_permissions_the_screens_need() -> None:
    def codenames(group: str) -> set[str]:
        return set(Group.objects.get(name=group).permissions.values_list("codename", flat=True))

    assert codenames(APPROVERS_GROUP) == {"view_rebalanceproposal", "view_approval", "view_vault"}
    assert codenames(OPERATORS_GROUP) == {
        "add_rebalanceproposal",
        "view_rebalanceproposal",
        "view_approval",
        "view_vault",
    }


def test_an_approver_lands_on_the_proposals_waiting_for_their_decision(world: World) -> None:
    first = client_for(world.approvers[0])
    response = first.get(CHANGELIST)
    assert response.status_code == 302 and response["Location"] == f"{CHANGELIST}?waiting=me"
    listing = page(first, f"{CHANGELIST}?waiting=me")
    assert world.proposal.proposal_id in listing and "0 of 2" in listing
    assert "waiting for my decision" in listing

    proposal_approve(proposal=world.proposal, approver=world.approvers[0])
    assert world.proposal.proposal_id not in page(first, f"{CHANGELIST}?waiting=me")
    # "All" is an explicit choice, so it does not bounce back to ?waiting=me.
    everything = page(first, f"{CHANGELIST}?waiting=all")
    assert world.proposal.proposal_id in everything and "1 of 2" in everything
    assert "Waiting for my decision (0)" in page(first, f"{CHANGELIST}?waiting=all&_facets=True")
    # The second approver still has it waiting.
    assert world.proposal.proposal_id in page(client_for(world.approvers[1]), f"{CHANGELIST}?waiting=me")


def test_operators_see_every_proposal_and_outsiders_none(world: World) -> None:
    operator = client_for(world.operator)
    assert operator.get(CHANGELIST).status_code == 200  # no redirect: not an approver
    assert world.proposal.proposal_id in page(operator, CHANGELIST)

    outsider = client_for(world.outsider)
    assert world.proposal.proposal_id not in page(outsider, f"{CHANGELIST}?waiting=me")
    assert world.proposal.proposal_id not in page(outsider, f"{CHANGELIST}?waiting=all")
    # Its page is as good as missing: the admin sends them back to the index.
    assert outsider.get(change_url(world.proposal)).status_code == 302
    assert world.proposal.proposal_id not in page(outsider, "/admin/approvals/approval/")


def test_the_proposal_page_shows_allocations_compliance_decisions_and_approvers(world: World) -> None:
    proposal_approve(proposal=world.proposal, approver=world.approvers[0], comment="Looks right to me")
    html = page(client_for(world.approvers[1]), change_url(world.proposal))
    assert 'id="allocations"' in html and "Current (on chain)" in html and "Proposed" in html
    assert "50.00%" in html and "Compound USDC" in html
    assert "unavailable" in html  # this vault's chain has no node
    assert 'id="compliance-result"' in html and "no market feed" in html  # every violation is listed
    assert "Looks right to me" in html and "approver1" in html and "1 of 2" in html
    for user in world.approvers:
        assert user.username in html
    assert "Nothing executed" in html
    # Read-only: no inputs of the model's fields, no save or delete.
    assert 'name="quorum_required"' not in html and 'name="_save"' not in html
    assert "deletelink" not in html


def test_only_a_designated_approver_who_has_not_decided_gets_the_buttons(world: World) -> None:
    proposal = world.proposal
    first = client_for(world.approvers[0])
    assert approve_url(proposal) in page(first, change_url(proposal))
    assert reject_url(proposal) in page(first, change_url(proposal))
    html = page(client_for(world.operator), change_url(proposal))  # sees it, may not decide
    assert approve_url(proposal) not in html and reject_url(proposal) not in html

    proposal_approve(proposal=proposal, approver=world.approvers[0])
    assert approve_url(proposal) not in page(first, change_url(proposal))
    RebalanceProposal.objects.filter(pk=proposal.pk).update(status=ProposalStatus.EXPIRED)
    assert approve_url(proposal) not in page(client_for(world.approvers[1]), change_url(proposal))


def test_approving_goes_through_a_confirmation_page_with_a_comment(world: World) -> None:
    proposal = world.proposal
    first = client_for(world.approvers[0], enforce_csrf_checks=True)
    html = page(first, approve_url(proposal))
    assert f"Approve {proposal.proposal_id}?" in html
    assert 'name="comment"' in html and "csrfmiddlewaretoken" in html and "Cancel" in html
    assert not Approval.objects.exists()  # a GET decides nothing

    assert first.post(approve_url(proposal), {"comment": "no token"}).status_code == 403  # CSRF
    token = first.cookies["csrftoken"].value
    response = first.post(approve_url(proposal), {"comment": "Within policy", "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == change_url(proposal)
    decision = Approval.objects.get()
    assert (decision.approver, decision.decision, decision.comment) == (
        world.approvers[0],
        Decision.APPROVE,
        "Within policy",
    )
    shown = [(m.level, m.message) for m in get_messages(response.wsgi_request)]
    assert shown == [(SUCCESS, f"You approved {proposal.proposal_id} (1 of 2 approvals).")]


def test_rejecting_records_a_rejection(world: World) -> None:
    second = client_for(world.approvers[1])
    assert "Reject " in page(second, reject_url(world.proposal))
    response = second.post(reject_url(world.proposal), {"comment": "Too much in Morpho"})
    assert response.status_code == 302
    assert Approval.objects.get().decision == Decision.REJECT
    assert RebalanceProposal.objects.get().status == ProposalStatus.PENDING  # 2 of 3 can still approve


def test_a_forged_decision_from_anyone_else_is_forbidden(world: World) -> None:
    for user in (world.outsider, world.operator):
        client = client_for(user)
        assert client.get(approve_url(world.proposal)).status_code == 403
        assert client.post(approve_url(world.proposal), {"comment": "forged"}).status_code == 403
        assert client.post(reject_url(world.proposal), {"comment": "forged"}).status_code == 403
    assert not Approval.objects.exists()
    # Not logged in: the admin's login page, nothing recorded.
    assert Client().post(approve_url(world.proposal)).status_code == 302
    assert not Approval.objects.exists()


def test_deciding_twice_or_on_a_closed_proposal_warns_and_changes_nothing(world: World) -> None:
    first = client_for(world.approvers[0])
    shown = first.post(approve_url(world.proposal), {"comment": "yes"}, follow=True).content.decode()
    assert "You approved" in shown  # the message shows on the proposal page it returns to
    response = first.post(approve_url(world.proposal), {"comment": "yes again"})
    assert response.status_code == 302
    assert [m.level for m in get_messages(response.wsgi_request)] == [WARNING]
    assert Approval.objects.count() == 1
    # The confirmation page is not offered again either.
    assert first.get(approve_url(world.proposal)).status_code == 302

    RebalanceProposal.objects.filter(pk=world.proposal.pk).update(status=ProposalStatus.EXPIRED)
    response = client_for(world.approvers[1]).post(reject_url(world.proposal), {"comment": "late"})
    assert response.status_code == 302
    assert [m.level for m in get_messages(response.wsgi_request)] == [WARNING]
    assert Approval.objects.count() == 1


def test_operators_propose_through_the_add_form_and_service_errors_show_on_it(world: World) -> None:
    operator = client_for(world.operator)
    form = page(operator, ADD)
    assert 'name="vault"' in form and 'name="approvers"' in form and 'name="quorum"' in form
    assert 'name="allocation"' in form and "Create proposal" in form
    data = {
        "vault": world.vault.pk,
        "approvers": [u.pk for u in world.approvers],
        "quorum": 4,
        "allocation": "Aave USDC: 50\nMorpho USDC: 50%",
    }
    response = operator.post(ADD, data)
    assert response.status_code == 200
    assert "quorum 4 must be between 1 and 3" in response.content.decode()
    assert RebalanceProposal.objects.count() == 1

    response = operator.post(ADD, {**data, "quorum": 2, "allocation": "Aave USDC: 50\nMorpho USDC: 40"})
    assert "not 100%" in response.content.decode()
    response = operator.post(ADD, {**data, "quorum": 2, "allocation": "Aave USDC 100"})
    assert "Protocol name: percent" in response.content.decode()
    assert RebalanceProposal.objects.count() == 1

    response = operator.post(ADD, {**data, "quorum": 2})
    created = RebalanceProposal.objects.exclude(pk=world.proposal.pk).get()
    assert response.status_code == 302 and response["Location"] == change_url(created)
    assert created.proposer == world.operator and created.policy == world.policy
    assert created.quorum_required == 2 and set(created.approvers.all()) == set(world.approvers)
    assert created.proposed_allocations == {"Aave USDC": "50", "Morpho USDC": "50"}
    assert Protocol.objects.count() == 3


def test_approvers_cannot_propose_and_nobody_edits_or_deletes(world: World) -> None:
    approver = client_for(world.approvers[0])
    assert approver.get(ADD).status_code == 403
    assert "Add rebalance proposal" not in page(approver, f"{CHANGELIST}?waiting=all")
    for user in (world.operator, world.approvers[0]):
        client = client_for(user)
        assert client.post(change_url(world.proposal), {"status": "approved"}).status_code == 403
        assert client.get(f"{CHANGELIST}{world.proposal.pk}/delete/").status_code == 403
        assert client.get("/admin/approvals/approval/add/").status_code == 403
    superuser = client_for(User.objects.create_superuser("root", password="pw"))
    assert superuser.post(change_url(world.proposal), {"status": "approved"}).status_code == 403
    assert superuser.get(f"{CHANGELIST}{world.proposal.pk}/delete/").status_code == 403
    assert RebalanceProposal.objects.get().status == ProposalStatus.PENDING


def test_the_decisions_list_is_read_only(world: World) -> None:
    proposal_approve(proposal=world.proposal, approver=world.approvers[0], comment="fine")
    decision = Approval.objects.get()
    client = client_for(world.approvers[1])
    assert "approver1" in page(client, "/admin/approvals/approval/")
    html = page(client, f"/admin/approvals/approval/{decision.pk}/change/")
    assert "fine" in html and 'name="comment"' not in html
    assert client.post(f"/admin/approvals/approval/{decision.pk}/change/", {"comment": "x"}).status_code == 403
    assert client.get(f"/admin/approvals/approval/{decision.pk}/delete/").status_code == 403
