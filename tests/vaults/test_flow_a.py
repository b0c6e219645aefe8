"""Flow A end to end: a signed feed leads to a signed intent whose transactions really move the
asset between ERC-4626 vaults on anvil, with a real worker."""

from __future__ import annotations

import pytest
from web3 import Web3

from approvals.models import RebalanceProposal
from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from relayer.models import RelayTransaction
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.flows import ENTRIES, bootstrapped_vault, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from vaults import onchain
from vaults.models import ExecutionIntent, IntentStatus, Protocol
from vaults.selectors import intent_relays
from vaults.services.feeds import feed_accept

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]


def run_for(feed_id: str) -> WorkflowRun:
    return wait_until(
        lambda: WorkflowRun.objects.filter(kind="vault.rebalance", input__feed=feed_id).first(),
        timeout=10,
        message="a rebalance run",
    )


def finished(run_id: object, *phases: str, timeout: float = 90) -> WorkflowRun:
    wanted = phases or (Phase.COMPLETED,)
    return wait_until(
        lambda: WorkflowRun.objects.filter(pk=run_id, phase__in=wanted).first(),
        timeout=timeout,
        interval=0.2,
        message=f"the run to reach {wanted}",
    )


def test_a_feed_leads_to_an_intent_and_balances_that_match_the_allocation(
    workers: Workers, anvils: AnvilFactory
) -> None:
    url = anvils.start()
    chain = make_chain(url, poll_interval=0.1)
    setup = bootstrapped_vault(chain)
    workers.start(extra_env=RELAY_ENV)

    feed = feed_accept(payload=signed_feed(setup.oracle, ENTRIES))
    run = finished(run_for(str(feed.id)).id)

    intent = ExecutionIntent.objects.get(vault=setup.vault)
    assert intent.status == IntentStatus.EXECUTED and intent.nonce == 1
    assert intent.allocation == {"Morpho USDC": "50.0000", "Aave USDC": "50.0000"}
    assert intent.policy == setup.policy and intent.feed == feed
    trail = run.outputs
    assert trail["verify"]["policyVersion"] == 1 and trail["check"] == {"ok": True, "violations": []}
    assert trail["decide"]["decision"] == "intent" and trail["relay"]["status"] == "executed"
    assert len(trail["relay"]["transactions"]) == 2  # two deposits from an all-idle vault
    # The journal's keys (`module` is new and optional: runs journaled before it still resume).
    assert set(trail["positions"]) == {"idle", "protocols", "total", "atIntentNonce", "addresses", "module"}
    assert set(trail["allocate"]) == {"strategy", "allocation"}
    assert set(trail["decide"]) == {"decision", "intent", "nonce", "valueMoved", "signature"}
    assert set(trail["relay"]) == {"status", "transactions"}

    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=chain)}
    held = onchain.positions(
        w3=Web3(Web3.HTTPProvider(url)),
        account=setup.vault.account.address,
        asset=setup.vault.asset_address,
        protocols=protocols,
    )
    assert held.total == 10**12
    assert held.by_protocol["Morpho USDC"] == held.by_protocol["Aave USDC"] == 5 * 10**11
    assert held.by_protocol["Compound USDC"] == 0 and held.idle == 0

    # A new feed that prefers Compound moves Aave's half there: withdrawals first, then deposits.
    entries = [dict(e) for e in ENTRIES]
    entries[1]["apy"] = "0.08"  # Compound now scores 0.04
    second = feed_accept(payload=signed_feed(setup.oracle, entries))
    finished(run_for(str(second.id)).id)
    intent = ExecutionIntent.objects.get(vault=setup.vault, nonce=2)
    assert [a["kind"] for a in intent.actions] == ["withdraw", "deposit"]
    # Requested together: the deposit follows the withdrawal, in the same batch at the next nonce,
    # simulated on the funds the withdrawal frees.
    withdraw, deposit = intent_relays(intent_id=intent.pk)
    assert withdraw.nonce is not None and deposit.after_id == withdraw.pk and deposit.nonce == withdraw.nonce + 1
    assert deposit.workflow_run_id == withdraw.workflow_run_id
    held = onchain.positions(
        w3=Web3(Web3.HTTPProvider(url)),
        account=setup.vault.account.address,
        asset=setup.vault.asset_address,
        protocols=protocols,
    )
    assert held.by_protocol == {"Aave USDC": 0, "Compound USDC": 5 * 10**11, "Morpho USDC": 5 * 10**11}


def test_above_the_approval_value_a_proposal_is_made_and_nothing_is_relayed(
    workers: Workers, anvils: AnvilFactory
) -> None:
    url = anvils.start()
    chain = make_chain(url, poll_interval=0.1)
    setup = bootstrapped_vault(chain, approval_threshold=10**6)
    from django.contrib.auth import get_user_model

    approvers = [get_user_model().objects.create_user(f"approver{i}") for i in range(3)]
    setup.vault.approvers.set(approvers)
    workers.start(extra_env=RELAY_ENV)

    feed = feed_accept(payload=signed_feed(setup.oracle, ENTRIES))
    run = finished(run_for(str(feed.id)).id)
    assert run.outputs["decide"]["decision"] == "proposal"
    proposal = RebalanceProposal.objects.get(proposal_id=run.outputs["decide"]["proposal"])
    assert proposal.status == "pending" and proposal.quorum_required == 2
    assert proposal.proposed_allocations == {"Morpho USDC": "50.0000", "Aave USDC": "50.0000"}
    assert set(proposal.approvers.all()) == set(approvers)
    assert not ExecutionIntent.objects.exists()
    assert not RelayTransaction.objects.exists()


def test_a_policy_refusal_blocks_the_run_with_every_violation(workers: Workers, anvils: AnvilFactory) -> None:
    url = anvils.start()
    chain = make_chain(url)
    setup = bootstrapped_vault(chain, max_exposure="20")  # 3 protocols x 20% cannot hold 100%
    workers.start(extra_env=RELAY_ENV)
    feed = feed_accept(payload=signed_feed(setup.oracle, ENTRIES))
    run = finished(run_for(str(feed.id)).id, Phase.BLOCKED)
    assert "no compliant allocation" in run.error
    assert not ExecutionIntent.objects.exists()
    # allocate ran carried on in the transaction recording positions (a leased RPC read): its
    # refusal rolled that back, and positions' outcome was recorded again, once.
    journal = list(run.steps.order_by("id").values_list("name", "status"))
    assert journal == [
        ("verify", StepStatus.DONE),
        ("positions", StepStatus.DONE),
        ("allocate", StepStatus.FAILED),
    ]
