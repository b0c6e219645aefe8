"""Flow B: proposals, decisions under a row lock, quorum, expiry, execution against the policy
active at that moment, notifications, and the REST endpoints."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient
from web3 import Web3

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.services import (
    AlreadyDecided,
    NotAnApprover,
    ProposalClosed,
    ProposalInvalid,
    proposal_approve,
    proposal_create,
    proposal_reject,
    proposals_expire,
)
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.infra.tokens import api_token_issue
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.flows import ENTRIES, bootstrapped_vault, signed_feed
from tests.support.mail import mails, worker_mail_env
from tests.support.relays import RELAY_ENV, make_chain
from vaults.models import ExecutionIntent, IntentStatus
from vaults.services.access import vault_grant
from vaults.services.feeds import feed_accept
from vaults.services.policies import policy_activate, policy_draft

pytestmark = pytest.mark.django_db(transaction=True)
User = get_user_model()
ALLOCATION = {"Morpho USDC": "50", "Aave USDC": "50"}


def users(*names: str) -> list[Any]:
    return [User.objects.create_user(n, email=f"{n}@example.test", password="pw") for n in names]


@pytest.fixture
def setup(anvils: AnvilFactory) -> Any:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    return bootstrapped_vault(chain)


@pytest.fixture
def people() -> dict[str, Any]:
    operator, a1, a2, a3, outsider = users("operator", "approver1", "approver2", "approver3", "outsider")
    Group.objects.get_or_create(name="Operators")[0].user_set.add(operator)
    return {"operator": operator, "approvers": [a1, a2, a3], "outsider": outsider}


def propose(setup: Any, people: dict[str, Any], quorum: int = 2, **kw: Any) -> RebalanceProposal:
    return proposal_create(
        vault=setup.vault,
        allocation=ALLOCATION,
        proposer=people["operator"],
        approvers=people["approvers"],
        quorum=quorum,
        **kw,
    )


def test_the_rules_of_deciding(setup: Any, people: dict[str, Any]) -> None:
    a1, a2, a3 = people["approvers"]
    proposal = propose(setup, people)
    assert proposal.proposal_id.startswith("PROP-") and proposal.status == ProposalStatus.PENDING
    with pytest.raises(NotAnApprover):
        proposal_approve(proposal=proposal, approver=people["outsider"])
    proposal_reject(proposal=proposal, approver=a1, comment="too much turnover")
    with pytest.raises(AlreadyDecided):
        proposal_approve(proposal=proposal, approver=a1)
    proposal = proposal_reject(proposal=proposal, approver=a2)  # 3 - 2 rejections < quorum 2
    assert proposal.status == ProposalStatus.REJECTED
    with pytest.raises(ProposalClosed):
        proposal_approve(proposal=proposal, approver=a3)
    assert list(proposal.approvals.values_list("approver__username", "decision", "comment")) == [
        ("approver1", "reject", "too much turnover"),
        ("approver2", "reject", ""),
    ]
    with pytest.raises(ProposalInvalid, match="quorum"):
        propose(setup, people, quorum=4)
    with pytest.raises(ProposalInvalid, match="own proposal"):
        proposal_create(vault=setup.vault, allocation=ALLOCATION, proposer=a1, approvers=[a1, a2], quorum=1)
    with pytest.raises(ProposalInvalid, match="100%"):
        proposal_create(
            vault=setup.vault, allocation={"Aave USDC": "60"}, proposer=people["operator"], approvers=[a1], quorum=1
        )


def test_approvers_are_told_and_the_proposer_hears_the_outcome(
    setup: Any, people: dict[str, Any], workers: Workers, tmp_path: Path
) -> None:
    # A worker sends the e-mails (tests/approvals/test_notify.py), here into files.
    workers.start(extra_env=worker_mail_env(tmp_path))
    proposal = propose(setup, people)
    told = wait_until(lambda: len(mails(tmp_path)) >= 3 and mails(tmp_path), message="the approvers' e-mails")
    assert sorted(m["To"] for m in told) == [f"approver{i}@example.test" for i in (1, 2, 3)]
    assert all(proposal.proposal_id in m["Subject"] for m in told)
    proposal_reject(proposal=proposal, approver=people["approvers"][0])
    proposal_reject(proposal=proposal, approver=people["approvers"][1])
    wait_until(lambda: len(mails(tmp_path)) >= 4, message="the proposer's e-mail")
    assert [(m["To"], m["Subject"]) for m in mails(tmp_path)[3:]] == [
        ("operator@example.test", f"{proposal.proposal_id} is rejected")
    ]


def test_old_proposals_expire_and_can_no_longer_be_decided(setup: Any, people: dict[str, Any]) -> None:
    proposal = propose(setup, people)
    RebalanceProposal.objects.filter(pk=proposal.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert proposals_expire() == 1
    assert RebalanceProposal.objects.get(pk=proposal.pk).status == ProposalStatus.EXPIRED
    with pytest.raises(ProposalClosed):
        proposal_approve(proposal=proposal, approver=people["approvers"][0])
    assert proposals_expire() == 0


def test_two_approvers_deciding_at_the_same_moment_move_it_to_approved_exactly_once(
    setup: Any, people: dict[str, Any]
) -> None:
    for _ in range(3):
        proposal = propose(setup, people)
        barrier = threading.Barrier(3)
        outcomes: list[str] = []

        def decide(approver: Any) -> None:
            barrier.wait()
            try:
                outcomes.append(proposal_approve(proposal=proposal, approver=approver).status)
            except ProposalClosed:
                outcomes.append("closed")
            finally:
                connection.close()

        threads = [threading.Thread(target=decide, args=(a,)) for a in people["approvers"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Real parallel transactions: the row lock orders them. The second approval reaches the
        # quorum; the third finds the proposal closed.
        assert sorted(outcomes) == ["approved", "closed", "pending"]
        assert RebalanceProposal.objects.get(pk=proposal.pk).approvals.count() == 2
        assert WorkflowRun.objects.filter(idempotency_key=f"flow-b:{proposal.pk}").count() == 1


def test_an_approved_proposal_is_checked_again_executed_once_and_moves_the_funds(
    setup: Any, people: dict[str, Any], workers: Workers
) -> None:
    setup.vault.auto_rebalance = False  # only Flow B moves funds in this test
    setup.vault.save()
    feed_accept(payload=signed_feed(setup.oracle, ENTRIES))  # risk scores for the check
    workers.start(extra_env=RELAY_ENV)
    a1, a2, _ = people["approvers"]
    proposal = propose(setup, people)
    proposal_approve(proposal=proposal, approver=a1)
    proposal = proposal_approve(proposal=proposal, approver=a2)
    assert proposal.status == ProposalStatus.APPROVED
    done = wait_until(
        lambda: RebalanceProposal.objects.filter(pk=proposal.pk, status="executed").first(),
        timeout=60,
        interval=0.3,
        message="the proposal to be executed",
    )
    intent = ExecutionIntent.objects.get(pk=done.intent_id)
    assert intent.status == IntentStatus.EXECUTED and intent.proposal_id == proposal.proposal_id
    run = WorkflowRun.objects.get(idempotency_key=f"flow-b:{proposal.pk}")
    w3 = Web3(Web3.HTTPProvider(setup.vault.chain.rpc_url))
    for tx_hash in run.outputs["relay"]["transactions"]:
        assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    # The journal's keys, as runs started before any change to the steps have them.
    assert set(run.outputs["positions"]) == {"idle", "protocols", "total", "atIntentNonce", "addresses", "module"}
    assert set(run.outputs["check"]) == {"ok", "violations"}
    assert set(run.outputs["emit"]) == {"intent", "nonce", "valueMoved", "policyVersion"}
    assert set(run.outputs["relay"]) == {"status", "transactions"}
    assert ExecutionIntent.objects.filter(proposal_id=proposal.proposal_id).count() == 1


def test_an_execution_whose_relay_fails_closes_its_intent_so_the_vault_can_rebalance_again(
    setup: Any, people: dict[str, Any], workers: Workers
) -> None:
    setup.vault.auto_rebalance = False  # only Flow B moves funds in this test
    setup.vault.save()
    feed_accept(payload=signed_feed(setup.oracle, ENTRIES))
    # Morpho refuses deposits: the last action's simulation reverts, nothing of it is sent.
    from tests.support.flows import DEPOSITS_REFUSED
    from vaults.models import Protocol
    from vaults.services.intents import intent_in_flight

    morpho = Protocol.objects.get(chain=setup.vault.chain, name="Morpho USDC").address
    Web3(Web3.HTTPProvider(setup.vault.chain.rpc_url)).provider.make_request(
        "anvil_setCode",
        [morpho, DEPOSITS_REFUSED],
    )
    workers.start(extra_env=RELAY_ENV)
    a1, a2, _ = people["approvers"]
    proposal = propose(setup, people)
    proposal_approve(proposal=proposal, approver=a1)
    proposal_approve(proposal=proposal, approver=a2)
    run = wait_until(
        lambda: WorkflowRun.objects.filter(idempotency_key=f"flow-b:{proposal.pk}", phase="failed").first(),
        timeout=60,
        interval=0.3,
        message="the execution to fail",
    )
    intent = ExecutionIntent.objects.get(proposal_id=proposal.proposal_id)
    assert intent.status == IntentStatus.FAILED and intent.error == run.error[:2000]
    assert intent_in_flight(vault_id=setup.vault.pk) is None


def test_execution_checks_the_policy_active_then_not_the_one_it_was_proposed_under(
    setup: Any, people: dict[str, Any], workers: Workers
) -> None:
    setup.vault.auto_rebalance = False
    setup.vault.save()
    feed_accept(payload=signed_feed(setup.oracle, ENTRIES))
    workers.start(extra_env=RELAY_ENV)
    proposal = propose(setup, people)
    policy_activate(policy=policy_draft(vault=setup.vault, max_exposure_pct=Decimal(40)))  # stricter now
    a1, a2, _ = people["approvers"]
    proposal_approve(proposal=proposal, approver=a1)
    proposal_approve(proposal=proposal, approver=a2)
    run = wait_until(
        lambda: WorkflowRun.objects.filter(idempotency_key=f"flow-b:{proposal.pk}", phase=Phase.BLOCKED).first(),
        timeout=30,
        message="execution to be blocked",
    )
    assert "exposure" in run.error
    stopped = RebalanceProposal.objects.get(pk=proposal.pk)
    assert stopped.intent_id is None and "exceeds the 40" in stopped.execution_error
    assert not ExecutionIntent.objects.exists()


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)}")
    return client


def test_the_rest_endpoints_follow_the_same_rules(setup: Any, people: dict[str, Any]) -> None:
    for user in (people["operator"], *people["approvers"], people["outsider"]):  # API clients read granted vaults
        vault_grant(client=user, vault=setup.vault)
    body = {
        "vaultId": "vault-eth-001",
        "approvers": ["approver1", "approver2", "approver3"],
        "quorumRequired": 2,
        "proposedAllocations": ALLOCATION,
    }
    assert _client(people["outsider"]).post("/v1/proposals", body, format="json").status_code == 403
    created = _client(people["operator"]).post("/v1/proposals", body, format="json")
    assert created.status_code == 201, created.content
    pid = created.json()["proposalId"]
    assert created.json()["status"] == "pending" and created.json()["quorumRequired"] == 2
    bad = _client(people["operator"]).post("/v1/proposals", {**body, "quorumRequired": 5}, format="json")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_proposal"

    assert _client(people["outsider"]).get(f"/v1/proposals/{pid}").status_code == 404
    a1 = _client(people["approvers"][0])
    assert a1.post(f"/v1/proposals/{pid}/execute").json()["error"]["code"] == "not_approved"
    first = a1.post(f"/v1/proposals/{pid}/approve", {"comment": "ok"}, format="json")
    assert first.status_code == 200 and first.json()["approvals"][0]["comment"] == "ok"
    again = a1.post(f"/v1/proposals/{pid}/approve", {}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_decided"
    second = _client(people["approvers"][1]).post(f"/v1/proposals/{pid}/approve", {}, format="json")
    assert second.json()["status"] == "approved"
    executed = a1.post(f"/v1/proposals/{pid}/execute")
    assert executed.status_code == 202
    assert a1.post(f"/v1/proposals/{pid}/execute").json()["workflowId"] == executed.json()["workflowId"]
