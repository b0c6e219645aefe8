"""The approvers' admin screen: who sees which proposal, who gets the buttons, the confirmation
page and its POST, the operators' add form, and that nothing is edited or deleted here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.messages import SUCCESS, WARNING, get_messages
from django.test import Client

from approvals.models import Approval, Decision, ProposalStatus, RebalanceProposal
from approvals.selectors import APPROVERS_GROUP, OPERATORS_GROUP
from approvals.services import EXECUTE_WORKFLOW, proposal_approve, proposal_create, proposal_reject
from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from tests.support.vaults import entry, feed_body, make_oracle, make_policy, make_protocol, make_vault, now_s
from vaults.models import Protocol, Vault, VaultPolicy
from vaults.services.feeds import feed_accept

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


# --- the designated approvers' decisions, the refusal page, the confirmation page -----------


def test_the_designated_approvers_table_names_each_decision_in_full(world: World) -> None:
    proposal_approve(proposal=world.proposal, approver=world.approvers[0])
    proposal_reject(proposal=world.proposal, approver=world.approvers[1])
    html = page(client_for(world.operator), change_url(world.proposal))
    table = html.split('id="approvers"', 1)[1].split("</table>", 1)[0]
    assert "Approved" in table and "Rejected" in table and "not decided" in table
    assert "Rejectd" not in html and "Approved" + "d" not in html


def assert_refused_inside_the_admin(response: Any, proposal: RebalanceProposal, reason: str) -> None:
    html = response.content.decode()
    assert response.status_code == 403, response.status_code
    assert [t.name for t in response.templates][:2] == [
        "admin/approvals/rebalanceproposal/decision_refused.html",
        "admin/base_site.html",
    ]
    assert 'id="header"' in html and 'class="breadcrumbs"' in html  # the admin's layout
    assert reason in html, html
    assert f'href="{change_url(proposal)}"' in html and f"Back to {proposal.proposal_id}" in html


def test_someone_who_may_not_decide_gets_a_403_page_inside_the_admin_saying_why(world: World) -> None:
    proposal = world.proposal
    outsider, operator = client_for(world.outsider), client_for(world.operator)
    for url in (approve_url(proposal), reject_url(proposal)):
        assert_refused_inside_the_admin(outsider.get(url), proposal, "not a designated approver")
        assert_refused_inside_the_admin(operator.get(url), proposal, "your own proposal")
    # The service's own refusal of a POST (a 403 DomainError) gets the same page.
    posted = outsider.post(approve_url(proposal), {"comment": "forged"})
    assert_refused_inside_the_admin(posted, proposal, "is not an approver of")
    posted = operator.post(reject_url(proposal), {"comment": "forged"})
    assert posted.status_code == 403 and "admin/base_site.html" in [t.name for t in posted.templates]
    assert not Approval.objects.exists()


def test_the_confirmation_page_shows_the_compliance_check_and_approve_is_the_default_action(
    world: World,
) -> None:
    client = client_for(world.approvers[0])
    html = page(client, approve_url(world.proposal))
    section = html.split('id="compliance"', 1)[1].split("</div>", 1)[0]
    assert f"policy active now (v{world.policy.version})" in section
    assert 'data-ok="false"' in section and "no market feed" in section  # each violation listed
    button = html.split('id="confirm-button"', 1)[1].split(">", 1)[0]
    assert 'class="default"' in button and "deletelink" not in button
    assert "delete-confirmation" not in html  # the admin styles every submit of that page as Delete
    reject = page(client, reject_url(world.proposal))
    button = reject.split('id="confirm-button"', 1)[1].split(">", 1)[0]
    assert 'class="reject-button"' in button and "deletelink" not in button and "default" not in button


def test_a_compliant_proposal_passes_on_the_confirmation_page(world: World) -> None:
    key, oracle = make_oracle()
    world.policy.oracles.add(key)
    feed_accept(payload=feed_body(oracle, now_s(), [entry("Aave USDC", risk=1), entry("Morpho USDC", risk=1)]))
    html = page(client_for(world.approvers[0]), approve_url(world.proposal))
    section = html.split('id="compliance"', 1)[1].split("</div>", 1)[0]
    assert 'data-ok="true"' in section and "passes the compliance check" in section


# --- the execution's state, one statement per run phase ---------------------------------------


def executing(world: World, phase: str, **fields: Any) -> WorkflowRun:
    """The proposal approved and its run in `phase`, as the engine would leave the rows."""
    RebalanceProposal.objects.filter(pk=world.proposal.pk).update(status=ProposalStatus.APPROVED)
    return WorkflowRun.objects.create(
        kind=EXECUTE_WORKFLOW,
        idempotency_key=f"flow-b:{world.proposal.pk}",
        correlation_id="c",
        input={"proposal": world.proposal.pk},
        phase=phase,
        **fields,
    )


def execution_section(world: World) -> str:
    html = page(client_for(world.operator), change_url(world.proposal))
    return html.split('id="execution"', 1)[1].split("</div>", 1)[0]


def test_a_run_waiting_for_the_timing_rule_says_until_when_and_nothing_else(world: World) -> None:
    due = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    run = executing(world, Phase.CONFIRMING, step_name="check", current_step=1, due_at=due)
    run.steps.create(
        index=1,
        name="check",
        attempt=1,
        status=StepStatus.WAITING,
        started_at=due,
        output={"phase": "confirming", "waiting": "the policy's timing rule: the last rebalance was too recent"},
    )
    section = execution_section(world)
    assert 'data-state="waiting"' in section
    assert (
        "Waiting for the policy&#x27;s timing rule: the last rebalance was too recent; "
        "the check runs again at 2030-01-02 03:04:05 UTC" in section
    )
    assert "Stopped" not in section and "being prepared" not in section and "Nothing executed" not in section


@pytest.mark.parametrize(
    ("phase", "state", "text", "absent"),
    [
        (Phase.BLOCKED, "stopped", "Stopped: compliance at execution: exposure", ("Failed", "prepared", "Waiting")),
        (Phase.FAILED, "failed", "Failed (failed): emit: boom", ("Stopped", "prepared", "Waiting")),
        (Phase.DEAD_LETTER, "failed", "Failed (dead letter): emit: boom", ("Stopped", "prepared", "Waiting")),
        (Phase.SUBMITTING, "running", "Approved; the intent is being prepared (step check).", ("Stopped", "Failed")),
    ],
)
def test_each_run_phase_has_one_statement(
    world: World, phase: str, state: str, text: str, absent: tuple[str, ...]
) -> None:
    errors: dict[str, str] = {Phase.BLOCKED: "compliance at execution: exposure", Phase.SUBMITTING: ""}
    error = errors.get(phase, "emit: boom")
    executing(world, phase, step_name="check", error=error)
    # What on_transition left on the proposal: the page follows the run, not this.
    RebalanceProposal.objects.filter(pk=world.proposal.pk).update(execution_error=error)
    section = execution_section(world)
    assert f'data-state="{state}"' in section and text in section
    for contradiction in (*absent, "Nothing executed"):
        assert contradiction not in section, contradiction
