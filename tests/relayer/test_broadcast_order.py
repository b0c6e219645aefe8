"""relayer/services/submission.py: a signer's nonces reach the node in order even when a batch
broadcasts before the batch signed ahead of it. Steps run in the test's process, one at a time,
against a real anvil (automine), which holds a transaction whose nonce is ahead of the chain's
and mines nothing more until another transaction arrives."""

from __future__ import annotations

import pytest

from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import step_execute
from relayer.models import Broadcast, RelayTransaction, TxPhase
from relayer.services.batches import relay_batch_form
from relayer.services.requests import relay_request
from tests.support.relays import RECEIVER, funded_signer, make_chain, nonce_on_chain

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.relayer]

SIMULATE, SIGN, BROADCAST, CONFIRM = range(4)


def _steps(run: WorkflowRun, *indexes: int) -> None:
    for index in indexes:
        assert step_execute(run_id=run.id, index=index, inline_steps=0) == "done", index


def test_a_batch_that_overtakes_the_one_signed_before_it_sends_that_ones_nonces_first(anvil: str) -> None:
    chain = make_chain(anvil, poll_interval=0.05)
    signer = funded_signer(anvil)
    start = nonce_on_chain(anvil, signer.address)
    first = [
        relay_request(signer=signer, chain=chain, to=RECEIVER, value=1, idempotency_key=f"first-{i}") for i in range(3)
    ]
    ahead = relay_batch_form(chain_id=chain.pk)
    assert ahead is not None
    _steps(ahead, SIMULATE, SIGN)  # nonces taken and stored; its broadcast has not run yet
    later = [
        relay_request(signer=signer, chain=chain, to=RECEIVER, value=1, idempotency_key=f"later-{i}") for i in range(2)
    ]
    behind = relay_batch_form(chain_id=chain.pk)
    assert behind is not None

    _steps(behind, SIMULATE, SIGN, BROADCAST, CONFIRM)

    assert sorted(RelayTransaction.objects.filter(pk__in=[tx.pk for tx in first]).values_list("nonce", flat=True)) == [
        start,
        start + 1,
        start + 2,
    ]
    assert nonce_on_chain(anvil, signer.address) == start + 5  # the earlier nonces went first
    assert set(RelayTransaction.objects.filter(pk__in=[tx.pk for tx in later]).values_list("phase", flat=True)) == {
        TxPhase.COMPLETED
    }
    # The batch ahead sends its bytes again on its own broadcast: the node has them, and they
    # confirm as sent once, with no second transaction for any request.
    _steps(ahead, BROADCAST, CONFIRM)
    assert set(RelayTransaction.objects.filter(pk__in=[tx.pk for tx in first]).values_list("phase", flat=True)) == {
        TxPhase.COMPLETED
    }
    assert Broadcast.objects.filter(transaction__signer=signer).count() == 5
    assert nonce_on_chain(anvil, signer.address) == start + 5
    assert set(WorkflowRun.objects.filter(pk__in=[ahead.pk, behind.pk]).values_list("phase", flat=True)) == {
        Phase.COMPLETED
    }
