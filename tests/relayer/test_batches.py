"""relayer/services/batches.py: how a lane forms batches, and how runs from before batches
are carried over. Steps run in the test's process: no worker, no chain."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.services import step_execute, workflow_start
from relayer.keys import key_manager
from relayer.models import RelayTransaction, TxPhase
from relayer.services.batches import relay_batch_form
from relayer.services.requests import RELAY_WORKFLOW, relay_request
from tests.support.relays import RECEIVER, closed_url, make_chain


@pytest.mark.django_db
def test_a_lane_batches_the_chains_pending_requests_of_every_signer_oldest_first(settings: Any) -> None:
    chain = make_chain(closed_url())
    alice, bob = (key_manager().create_key(purpose="relayer") for _ in range(2))
    first = [
        relay_request(signer=s, chain=chain, to=RECEIVER, idempotency_key=f"a-{i}")
        for i, s in enumerate([alice, bob, alice])
    ]
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None and run.kind == RELAY_WORKFLOW and run.input == {"chain": chain.pk, "size": 3}
    batched = RelayTransaction.objects.filter(workflow_run=run).order_by("created_at")
    assert [tx.pk for tx in batched] == [tx.pk for tx in first]

    later = relay_request(signer=bob, chain=chain, to=RECEIVER, idempotency_key="b-1")
    # The first batch has not signed yet: the lane waits for it, and it kicks again later.
    assert relay_batch_form(chain_id=chain.pk) is None
    WorkflowRun.objects.filter(pk=run.pk).update(attempts=1)  # backing off: it no longer holds the lane
    second = relay_batch_form(chain_id=chain.pk)
    assert second is not None and list(RelayTransaction.objects.filter(workflow_run=second)) == [later]
    WorkflowRun.objects.filter(pk=second.pk).update(attempts=1)
    assert relay_batch_form(chain_id=chain.pk) is None  # nothing left to batch

    WorkflowRun.objects.filter(pk=second.pk).update(attempts=0)
    last = relay_request(signer=alice, chain=chain, to=RECEIVER, idempotency_key="c-1")
    assert relay_batch_form(chain_id=chain.pk) is None  # the second batch is at work
    # ... until it has been at it for longer than a batch ever takes (its worker died, say).
    long_ago = timezone.now() - timedelta(seconds=settings.RELAYER_LANE_HOLD_SECONDS + 1)
    WorkflowRun.objects.filter(pk=second.pk).update(created_at=long_ago)
    third = relay_batch_form(chain_id=chain.pk)
    assert third is not None and list(RelayTransaction.objects.filter(workflow_run=third)) == [last]


@pytest.mark.django_db
def test_a_lane_takes_at_most_a_batch_size_and_kicks_itself_for_the_rest(settings: Any) -> None:
    settings.RELAYER_BATCH_SIZE = 2
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    for i in range(3):
        relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key=f"k-{i}")
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None and run.input["size"] == 2
    assert RelayTransaction.objects.filter(workflow_run__isnull=True).count() == 1


@pytest.mark.django_db
def test_a_request_after_another_waits_for_it_outside_its_batch_and_fails_if_it_fails() -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    first = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="first")
    batch = relay_batch_form(chain_id=chain.pk)
    assert batch is not None
    RelayTransaction.objects.filter(pk=first.pk).update(phase=TxPhase.CONFIRMING, nonce=0)
    second = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="second", after=first)
    third = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="third", after=second)
    # The first is still on its way: the others wait, whatever else the lane takes.
    other = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="other")
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None and list(RelayTransaction.objects.filter(workflow_run=run)) == [other]

    RelayTransaction.objects.filter(pk=first.pk).update(phase=TxPhase.COMPLETED)
    WorkflowRun.objects.filter(pk=run.pk).update(attempts=1)  # no longer holds the lane
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None  # the first confirmed: the second and, behind it, the third go together
    assert [tx.pk for tx in RelayTransaction.objects.filter(workflow_run=run).order_by("created_at")] == [
        second.pk,
        third.pk,
    ]

    doomed = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="doomed")
    behind = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="behind", after=doomed)
    RelayTransaction.objects.filter(pk=doomed.pk).update(phase=TxPhase.FAILED, error="reverted on chain")
    WorkflowRun.objects.filter(pk=run.pk).update(attempts=1)
    assert relay_batch_form(chain_id=chain.pk) is None
    behind.refresh_from_db()
    assert behind.phase == TxPhase.FAILED and behind.nonce is None
    assert behind.error == f"not sent: relay {doomed.pk}, which it follows, failed"


# --- runs from before batches ----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("signed", [False, True])
def test_a_relay_transaction_run_in_flight_at_upgrade_moves_its_request_into_the_batches(signed: bool) -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    tx = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="old-1")
    old, _ = workflow_start(kind="relay.transaction", input={"tx": str(tx.id)})
    fields: dict[str, Any] = {"workflow_run": old, "phase": TxPhase.CONFIRMING if signed else TxPhase.SUBMITTING}
    if signed:
        fields.update(nonce=0, tx_hash="0x" + "ab" * 32, raw_tx="0x02")
    RelayTransaction.objects.filter(pk=tx.pk).update(**fields)
    WorkflowRun.objects.filter(pk=old.pk).update(current_step=3 if signed else 1)

    step_execute(run_id=old.id, index=3 if signed else 1)

    moved = RelayTransaction.objects.get(pk=tx.pk)
    assert WorkflowRun.objects.get(pk=old.pk).phase == "completed"
    if signed:  # its stored bytes are re-sent and confirmed by a batch of its own
        batch = WorkflowRun.objects.get(pk=moved.workflow_run_id)
        assert batch.kind == RELAY_WORKFLOW and "carried over" in batch.input["split"]
        assert (moved.phase, moved.nonce) == (TxPhase.CONFIRMING, 0)
    else:  # back in its lane, to be batched like a new request
        assert (moved.workflow_run_id, moved.phase) == (None, TxPhase.PENDING)
