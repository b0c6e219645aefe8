"""Proposals through the API are scoped to the vaults a client was granted, on top of who may
see a proposal at all (operators, its proposer, its approvers); the run an execution starts is
owned by whoever started it and readable by everyone who may read the proposal.

Two operators and two sets of approvers, each pair granted the vault or not. No worker runs: a
started execution just waits on the broker."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.selectors import OPERATORS_GROUP
from approvals.services import EXECUTE_WORKFLOW, proposal_approve, proposal_create, proposal_execution_start
from orchestrator.engine.models import WorkflowRun
from orchestrator.infra.tokens import api_token_issue
from tests.factories import UserFactory
from tests.support.vaults import make_policy, make_protocol, make_vault
from vaults.services.access import vault_grant

pytestmark = pytest.mark.django_db
ALLOCATION = {"Aave USDC": "60", "Compound USDC": "40"}


def api(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)}")
    return client


@pytest.fixture
def world() -> dict[str, Any]:
    for name in ALLOCATION:
        make_protocol(name)
    vault = make_vault()
    make_policy(vault, max_exposure_pct=Decimal(100))
    operators = Group.objects.get_or_create(name=OPERATORS_GROUP)[0]
    people = {
        name: UserFactory.create(username=name)
        for name in ("operator", "stranger-operator", "approver1", "approver2", "stranger-approver")
    }
    operators.user_set.add(people["operator"], people["stranger-operator"])
    for name in ("operator", "approver1", "approver2"):  # the strangers are granted nothing
        vault_grant(client=people[name], vault=vault)
    return {"vault": vault, **people}


def propose(world: dict[str, Any], *approvers: str) -> RebalanceProposal:
    return proposal_create(
        vault=world["vault"],
        allocation=ALLOCATION,
        proposer=world["operator"],
        approvers=[world[name] for name in approvers],
        quorum=2,
    )


def test_an_operator_cannot_propose_for_a_vault_it_was_not_granted(world: dict[str, Any]) -> None:
    body = {"vaultId": "vault-eth-001", "approvers": ["approver1", "approver2"], "quorumRequired": 2}
    body["proposedAllocations"] = ALLOCATION
    refused = api(world["stranger-operator"]).post("/v1/proposals", body, format="json")
    unknown = api(world["operator"]).post("/v1/proposals", {**body, "vaultId": "vault-nope"}, format="json")
    assert refused.status_code == unknown.status_code == 400
    assert refused.json() == unknown.json()
    assert refused.json()["error"]["fields"] == {"vaultId": "Unknown vault."}
    assert api(world["operator"]).post("/v1/proposals", body, format="json").status_code == 201


@pytest.mark.parametrize(
    ("method", "suffix"), [("get", ""), ("post", "/approve"), ("post", "/reject"), ("post", "/execute")]
)
def test_a_proposal_on_a_vault_not_granted_is_404_even_to_its_operator_or_approver(
    world: dict[str, Any], method: str, suffix: str
) -> None:
    proposal = propose(world, "approver1", "stranger-approver")
    path = f"/v1/proposals/{proposal.proposal_id}{suffix}"
    for stranger in ("stranger-operator", "stranger-approver"):
        response = getattr(api(world[stranger]), method)(path, {}, format="json")
        assert response.status_code == 404, (stranger, response.content)
        assert response.json() == {"error": {"code": "not_found", "message": "No proposal with that id."}}
    proposal.refresh_from_db()
    assert proposal.status == ProposalStatus.PENDING and not proposal.approvals.exists()


def test_the_granted_operator_and_approver_see_the_proposal(world: dict[str, Any]) -> None:
    proposal = propose(world, "approver1", "stranger-approver")
    for name in ("operator", "approver1"):
        response = api(world[name]).get(f"/v1/proposals/{proposal.proposal_id}")
        assert response.status_code == 200 and response.json()["proposalId"] == proposal.proposal_id
    decided = api(world["approver1"]).post(f"/v1/proposals/{proposal.proposal_id}/approve", {}, format="json")
    assert decided.status_code == 200 and decided.json()["approvals"][0]["approver"] == "approver1"


def test_the_workflow_id_execute_returns_is_readable_by_the_client_that_asked(world: dict[str, Any]) -> None:
    """Quorum starts the run, owned by the approver whose decision made it; the operator who then
    calls execute is handed that run and may read it, as may the other approver; a stranger may
    not."""
    proposal = propose(world, "approver1", "approver2")
    pid = proposal.proposal_id
    assert api(world["approver1"]).post(f"/v1/proposals/{pid}/approve", {}, format="json").status_code == 200
    quorum = api(world["approver2"]).post(f"/v1/proposals/{pid}/approve", {}, format="json")
    assert quorum.json()["status"] == "approved"
    run = WorkflowRun.objects.get(kind=EXECUTE_WORKFLOW)
    assert run.owner == world["approver2"]

    for name in ("operator", "approver1", "approver2"):
        client = api(world[name])
        executed = client.post(f"/v1/proposals/{pid}/execute")
        assert executed.status_code == 202, executed.content
        assert executed.json()["workflowId"] == str(run.id)
        status = client.get(f"/v1/workflows/{executed.json()['workflowId']}")
        assert status.status_code == 200, (name, status.content)
        assert status.json()["id"] == str(run.id) and status.json()["kind"] == EXECUTE_WORKFLOW
    for stranger in ("stranger-operator", "stranger-approver"):
        assert api(world[stranger]).get(f"/v1/workflows/{run.id}").status_code == 404


def test_the_execution_run_is_owned_by_whoever_starts_it_and_keeps_its_first_owner(world: dict[str, Any]) -> None:
    proposal = propose(world, "approver1", "approver2")
    proposal_approve(proposal=proposal, approver=world["approver1"])
    RebalanceProposal.objects.filter(pk=proposal.pk).update(status=ProposalStatus.APPROVED)
    proposal.refresh_from_db()
    run = proposal_execution_start(proposal=proposal, started_by=world["operator"])
    again = proposal_execution_start(proposal=proposal, started_by=world["approver1"])
    assert again.pk == run.pk
    assert WorkflowRun.objects.get(pk=run.pk).owner == world["operator"]
