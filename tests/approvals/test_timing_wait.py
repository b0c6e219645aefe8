"""Flow B's execution meets the policy's timing rule: "not yet" is a durable wait until the
time the rule names, then a fresh check, with nobody acting; a wait that would outlast the
proposal is a refusal that says so. Real worker, broker, PostgreSQL and anvil."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.services import proposal_approve, proposal_create
from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.flows import ENTRIES, bootstrapped_vault, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from vaults.models import ExecutionIntent, IntentStatus, Vault
from vaults.services.feeds import feed_accept
from vaults.services.policies import policy_activate, policy_draft

pytestmark = pytest.mark.django_db(transaction=True)
User = get_user_model()
ALLOCATION = {"Morpho USDC": "50", "Aave USDC": "50"}
INTERVAL = 10  # seconds: long enough to see the wait on a busy machine, short enough to wait out


@pytest.fixture
def setup(anvils: AnvilFactory) -> Any:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    setup = bootstrapped_vault(chain)
    setup.vault.auto_rebalance = False  # only Flow B moves funds here
    setup.vault.save()
    feed_accept(payload=signed_feed(setup.oracle, ENTRIES))  # risk scores for the check
    return setup


def approved(setup: Any, *, expires_in: timedelta | None = None) -> RebalanceProposal:
    """A proposal approved by two of its three approvers, the vault's last rebalance just now."""
    operator = User.objects.create_user("operator", password="pw")
    a1, a2, a3 = (User.objects.create_user(f"approver{i}", password="pw") for i in (1, 2, 3))
    proposal = proposal_create(
        vault=setup.vault,
        allocation=ALLOCATION,
        proposer=operator,
        approvers=[a1, a2, a3],
        quorum=2,
        expires_at=timezone.now() + expires_in if expires_in else None,
    )
    proposal_approve(proposal=proposal, approver=a1)
    Vault.objects.filter(pk=setup.vault.pk).update(last_rebalance_at=timezone.now())
    proposal = proposal_approve(proposal=proposal, approver=a2)
    assert proposal.status == ProposalStatus.APPROVED
    return proposal


def execution_section(proposal: RebalanceProposal) -> str:
    client = Client()
    client.force_login(
        User.objects.get_or_create(username="root", defaults={"is_staff": True, "is_superuser": True})[0]
    )
    response = client.get(f"/admin/approvals/rebalanceproposal/{proposal.pk}/change/")
    assert response.status_code == 200
    return response.content.decode().split('id="execution"', 1)[1].split("</div>", 1)[0]


def the_run(proposal: RebalanceProposal, **filters: Any) -> WorkflowRun | None:
    return WorkflowRun.objects.filter(idempotency_key=f"flow-b:{proposal.pk}", **filters).first()


def test_an_approved_proposal_waits_out_the_minimum_interval_then_executes_by_itself(
    setup: Any, workers: Workers
) -> None:
    policy_activate(policy=policy_draft(vault=setup.vault, min_interval_seconds=INTERVAL))
    workers.start(extra_env=RELAY_ENV)
    proposal = approved(setup)
    last = Vault.objects.get(pk=setup.vault.pk).last_rebalance_at
    assert last is not None
    clears = last + timedelta(seconds=INTERVAL)

    run = wait_until(
        lambda: the_run(proposal, phase=Phase.CONFIRMING, step_name="positions"),
        timeout=INTERVAL,
        interval=0.1,
        message="execution to wait on the timing rule",
    )
    # Durable: the run is due again when the rule clears (the sweep would send it if the
    # broker's countdown were lost), and the journal says what it waits for.
    assert run.due_at is not None and abs(run.due_at - clears) < timedelta(milliseconds=50)
    # Waited out before the positions are read, so the check sees positions read after the wait.
    waiting = run.steps.get(name="positions", status=StepStatus.WAITING).output
    assert waiting["phase"] == Phase.CONFIRMING
    assert waiting["waiting"].startswith("the policy's timing rule: the last rebalance was too recent")
    assert waiting["until"] == clears.astimezone(UTC).isoformat()
    still = RebalanceProposal.objects.get(pk=proposal.pk)
    assert still.status == ProposalStatus.APPROVED and still.execution_error == "" and still.intent_id is None

    section = execution_section(proposal)
    assert 'data-state="waiting"' in section
    assert (
        "Waiting for the policy&#x27;s timing rule: the last rebalance was too recent; the next may run in" in section
    )
    assert f"the check runs again at {clears.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" in section
    assert "Stopped" not in section and "being prepared" not in section

    done = wait_until(
        lambda: RebalanceProposal.objects.filter(pk=proposal.pk, status=ProposalStatus.EXECUTED).first(),
        timeout=INTERVAL + 60,
        interval=0.3,
        message="the proposal to execute once the interval passed",
    )
    run = WorkflowRun.objects.get(pk=run.pk)
    assert run.phase == Phase.COMPLETED and run.outputs["check"] == {"ok": True, "violations": []}
    passed = run.steps.get(name="check", status=StepStatus.DONE)
    assert passed.started_at >= clears  # checked afresh, after the rule cleared
    assert run.steps.get(name="positions", status=StepStatus.DONE).started_at >= clears  # fresh positions
    intent = ExecutionIntent.objects.get(pk=done.intent_id)
    assert intent.status == IntentStatus.EXECUTED and intent.created_at >= clears
    assert "Waiting" not in execution_section(proposal)


def test_a_wait_that_would_outlast_the_proposal_is_blocked_and_says_so(setup: Any, workers: Workers) -> None:
    policy_activate(policy=policy_draft(vault=setup.vault, min_interval_seconds=3600))
    workers.start(extra_env=RELAY_ENV)
    proposal = approved(setup, expires_in=timedelta(minutes=10))

    run = wait_until(
        lambda: the_run(proposal, phase=Phase.BLOCKED),
        timeout=30,
        interval=0.2,
        message="execution to be blocked",
    )
    assert "the last rebalance was too recent" in run.error and "after the proposal expires" in run.error
    assert not run.steps.filter(status=StepStatus.WAITING).exists()
    stopped = RebalanceProposal.objects.get(pk=proposal.pk)
    assert "after the proposal expires" in stopped.execution_error and stopped.intent_id is None
    assert not ExecutionIntent.objects.exists()
    section = execution_section(proposal)
    assert 'data-state="stopped"' in section and "after the proposal expires" in section
    assert "Waiting" not in section and "being prepared" not in section
