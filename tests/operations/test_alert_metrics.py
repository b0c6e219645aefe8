"""The metrics deploy/prometheus/alerts.yml alerts on (orchestrator/operations/alert_metrics.py),
read through /metrics from the real database and, for balances, a real anvil."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from approvals.models import ProposalStatus
from approvals.services import proposal_approve, proposal_create, proposal_reject
from orchestrator.automations.models import Firing, Subscription
from orchestrator.automations.services.firings import intervals_dispatch
from relayer.models import Chain
from relayer.rpc import rpc_batch
from tests.conftest import free_port
from tests.factories import ChainFactory, NodeChainFactory, SigningKeyFactory
from tests.operations.test_health import scrape
from tests.support.automations import api_client, signed_config_body
from tests.support.vaults import make_policy, make_protocol, make_vault

pytestmark = pytest.mark.django_db


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An RPC URL whose TCP connection is accepted by the kernel but never answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_balances_head_and_threshold_come_from_the_chain(anvil: str, settings: Any) -> None:
    settings.RELAYER_LOW_BALANCE_WEI = 10**16
    NodeChainFactory.create(rpc_url=anvil)
    low, rich = SigningKeyFactory.create(), SigningKeyFactory.create()
    operator = SigningKeyFactory.create(purpose="operator")
    rpc_batch(
        anvil, [("anvil_setBalance", [low.address, hex(5 * 10**15)]), ("anvil_setBalance", [rich.address, hex(10**18)])]
    )

    found = scrape()
    (head,) = rpc_batch(anvil, [("eth_blockNumber", [])])

    assert found[("relayer_rpc_up", (("chain", "31337"), ("name", "anvil-test")))] == 1
    assert found[("relayer_rpc_head_block", (("chain", "31337"),))] == int(head.result, 16)
    balances = {
        dict(labels)["address"]: value
        for (name, labels), value in found.items()
        if name == "relayer_signer_balance_wei"
    }
    assert balances[low.address] == 5 * 10**15
    assert balances[rich.address] == 10**18
    assert operator.address not in balances  # only relayer keys pay for gas
    assert (
        "relayer_signer_balance_wei",
        (("address", low.address), ("chain", "31337"), ("purpose", "relayer")),
    ) in found
    assert found[("relayer_signer_low_balance_threshold_wei", ())] == 10**16


def test_a_dead_and_a_silent_rpc_are_down_within_the_timeout(black_hole: str, settings: Any) -> None:
    settings.ALERTS_RPC_TIMEOUT_SECONDS = 1.0
    # Only this test's chains: a chain seeded elsewhere may point at a node that happens to be up
    # (CI saw one answer while a `make run` on the same machine had anvil on its port).
    Chain.objects.update(enabled=False)
    ChainFactory.create(chain_id=776, name="refused", rpc_url=f"http://127.0.0.1:{free_port()}")
    ChainFactory.create(chain_id=777, name="silent", rpc_url=black_hole)
    ChainFactory.create(chain_id=778, name="disabled", rpc_url=black_hole, enabled=False)
    SigningKeyFactory.create()

    started = time.monotonic()
    found = scrape()
    took = time.monotonic() - started

    assert found[("relayer_rpc_up", (("chain", "776"), ("name", "refused")))] == 0
    assert found[("relayer_rpc_up", (("chain", "777"), ("name", "silent")))] == 0
    assert not any(labels and dict(labels).get("chain") == "778" for (_, labels) in found)
    assert not any(name in ("relayer_signer_balance_wei", "relayer_rpc_head_block") for (name, _) in found)
    assert took < 2.5, f"a silent RPC held the scrape for {took:.2f} s"


def test_pending_proposals_report_expiry_approvals_and_quorum() -> None:
    for name in ("Aave USDC", "Compound USDC"):
        make_protocol(name)
    vault = make_vault()
    policy = make_policy(vault)
    alice, bob, carol = (get_user_model().objects.create_user(username=n) for n in ("alice", "bob", "carol"))
    allocation = {"Aave USDC": 60, "Compound USDC": 40}
    near = proposal_create(vault=vault, policy=policy, allocation=allocation, approvers=[alice, bob, carol], quorum=2)
    proposal_approve(proposal=near, approver=alice)
    proposal_reject(proposal=near, approver=bob)  # a rejection is not an approval
    near.refresh_from_db()
    assert near.status == ProposalStatus.PENDING
    type(near).objects.filter(pk=near.pk).update(expires_at=timezone.now() + timedelta(minutes=30))
    closed = proposal_create(vault=vault, policy=policy, allocation=allocation, approvers=[alice], quorum=1)
    type(closed).objects.filter(pk=closed.pk).update(status=ProposalStatus.EXPIRED)

    found = scrape()

    key = (("proposal", near.proposal_id), ("vault", str(vault.vault_id)))
    assert 1790 < found[("approvals_proposal_expires_in_seconds", key)] <= 1800
    assert found[("approvals_proposal_approvals", key)] == 1
    assert found[("approvals_proposal_quorum_required", key)] == 2
    assert not any(labels and dict(labels).get("proposal") == closed.proposal_id for (_, labels) in found)


def test_an_interval_trigger_is_overdue_until_its_hook_is_sent(local_destinations: None) -> None:
    ChainFactory.create()
    client = api_client()
    config = client.post("/v1/config", signed_config_body(client, base_url="http://127.0.0.1:9"), format="json").json()
    sub = client.post(
        "/v1/subscriptions",
        {
            "registryID": config["registryID"],
            "chainId": 31337,
            "subAccountAddress": "0x" + "ab" * 20,
            "tokenInputs": {},
            "tokenLimits": {},
            "metadata": {},
            "feeToken": "",
            "feeAmount": "0",
        },
        format="json",
    )
    assert sub.status_code == 201, sub.content
    assert scrape()[("automation_trigger_overdue_seconds", ())] == 0
    due = timezone.now() - timedelta(seconds=90)
    Subscription.objects.filter(pk=sub.json()["id"]).update(next_run_at=due)

    assert 90 <= scrape()[("automation_trigger_overdue_seconds", ())] < 100  # beat's dispatcher has not run

    assert intervals_dispatch(deliver=lambda ids, token, when: None) == 1
    assert 90 <= scrape()[("automation_trigger_overdue_seconds", ())] < 100  # fired, its hook not sent

    Firing.objects.update(sent_at=timezone.now())
    assert scrape()[("automation_trigger_overdue_seconds", ())] == 0
