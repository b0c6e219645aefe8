"""relayer/services/lanes.py: lane kicks on the broker (Redis) absorb each other until one
starts, and a lane forms one batch per interval. No worker picks them up."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from orchestrator.engine.models import WorkflowRun
from orchestrator.infra.broker import queue_depth, queues_purge
from relayer.keys import key_manager
from relayer.models import RelayTransaction
from relayer.services import lanes
from relayer.services.batches import relay_batch_form, relay_batches_orphaned
from relayer.services.requests import relay_request
from tests.factories import ChainFactory
from tests.support.relays import RECEIVER, closed_url, make_chain


def test_a_lane_kick_queued_and_not_yet_started_absorbs_the_next_ones() -> None:
    queues_purge()
    chain_id = 10_000 + uuid.uuid4().int % 1000
    try:
        lanes._send(chain_id)
        lanes._send(chain_id)  # the first has not started: it will see this request too
        assert queue_depth("relay") == 1
        lanes.lane_kick_started(chain_id=chain_id)
        lanes._send(chain_id)  # the first one is looking already: this request needs its own
        assert queue_depth("relay") == 2
    finally:
        lanes.lane_kick_started(chain_id=chain_id)
        queues_purge()


@pytest.mark.django_db
def test_a_batch_freeing_its_lane_kicks_it_only_if_a_request_is_waiting() -> None:
    queues_purge()
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    try:
        lanes._send_if_waiting(chain.pk)
        assert queue_depth("relay") == 0  # nothing waits: no kick to find nothing
        # A request that came while the batch was at work (its own kick found the lane busy;
        # here it is never sent, the test's transaction never commits).
        relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-1")
        lanes._send_if_waiting(chain.pk)
        assert queue_depth("relay") == 1
    finally:
        lanes.lane_kick_started(chain_id=chain.pk)
        queues_purge()


@pytest.mark.django_db
def test_a_kick_that_finds_the_lane_busy_leaves_the_next_requests_to_the_batch_at_work() -> None:
    queues_purge()
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    try:
        lanes.lane_kick_holding(chain_id=chain.pk)  # a kick looked, and found a batch still to sign
        relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-1")
        lanes._send(chain.pk)  # that request's own kick (the test's transaction never commits)
        assert queue_depth("relay") == 0  # the batch at work kicks for it once it has signed
        lanes._send_if_waiting(chain.pk)  # it has: the lane is free, and the request waits
        assert queue_depth("relay") == 1
        lanes._send(chain.pk)  # a later request: the kick just sent has not started, it sees it
        assert queue_depth("relay") == 1
    finally:
        lanes.lane_kick_started(chain_id=chain.pk)
        queues_purge()


@pytest.mark.django_db
def test_the_orphan_check_kicks_one_lane_per_chain_however_many_requests_wait() -> None:
    # The model orders by -created_at; under that ordering DISTINCT chain_id was one row per
    # request, and the monitor sent 26 kicks for one chain.
    queues_purge()
    chains = [make_chain(closed_url()), ChainFactory.create(chain_id=31338, rpc_url=closed_url())]
    signer = key_manager().create_key(purpose="relayer")
    try:
        for chain in chains:
            for n in range(13):
                relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key=f"k-{chain.pk}-{n}")
        for n, pk in enumerate(RelayTransaction.objects.values_list("pk", flat=True)):
            RelayTransaction.objects.filter(pk=pk).update(created_at=timezone.now() - timedelta(minutes=5, seconds=n))
        assert relay_batches_orphaned(older_than=60) == 2
        assert queue_depth("relay") == 2
        assert relay_batches_orphaned(older_than=600) == 0  # none waited that long
    finally:
        for chain in chains:
            lanes.lane_kick_started(chain_id=chain.pk)
        queues_purge()


@pytest.mark.django_db
def test_a_lane_forms_one_batch_per_interval_and_kicks_itself_for_the_end_of_it(settings: Any) -> None:
    settings.RELAYER_BATCH_INTERVAL_SECONDS = 0.5
    queues_purge()
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    try:
        relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-1")
        first = relay_batch_form(chain_id=chain.pk, paced=True)  # a quiet lane: at once
        assert first is not None
        WorkflowRun.objects.filter(pk=first.pk).update(attempts=1)  # backing off: the lane is free
        later = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-2")
        started = time.monotonic()
        assert relay_batch_form(chain_id=chain.pk, paced=True) is None  # within the interval
        assert queue_depth("relay") == 1  # the kick for the interval's end
        flags = lanes._flags()
        assert flags is not None and flags.exists(lanes._flag(chain.pk))  # meanwhile requests send no kicks
        assert 0 < lanes.lane_pace(chain_id=chain.pk) <= 0.5
        time.sleep(0.5 - (time.monotonic() - started) + 0.05)
        second = relay_batch_form(chain_id=chain.pk, paced=True)
        assert second is not None and list(RelayTransaction.objects.filter(workflow_run=second)) == [later]
        # Unpaced (tests, replays) or with the interval at 0, a lane forms whenever it is free.
        settings.RELAYER_BATCH_INTERVAL_SECONDS = 0
        assert lanes.lane_pace(chain_id=chain.pk) == 0 == lanes.lane_pace(chain_id=chain.pk)
    finally:
        lanes.lane_kick_started(chain_id=chain.pk)
        queues_purge()


def test_one_kick_is_due_at_the_end_of_a_lanes_interval_however_many_ask(settings: Any) -> None:
    settings.RELAYER_BATCH_INTERVAL_SECONDS = 0.5
    queues_purge()
    chain_id = 10_000 + uuid.uuid4().int % 1000
    try:
        assert lanes.lane_pace(chain_id=chain_id) == 0  # a batch forms now: the interval starts
        lanes._send(chain_id)  # a request's kick, due at the interval's end
        lanes.lane_kick_started(chain_id=chain_id)  # the mark cleared, as a batch that signed does
        lanes._send(chain_id)  # that batch's kick: the one due already will do
        lanes.lane_kick_later(chain_id=chain_id, seconds=0.4)  # a kick that found the lane paced: likewise
        assert queue_depth("relay") == 1
        lanes.lane_kick_due_started(chain_id=chain_id)  # that kick runs: another may be sent for later
        lanes.lane_kick_later(chain_id=chain_id, seconds=0.3)
        assert queue_depth("relay") == 2
    finally:
        lanes.lane_kick_started(chain_id=chain_id)
        lanes.lane_kick_due_started(chain_id=chain_id)
        queues_purge()


@pytest.mark.django_db(transaction=True)
def test_requests_are_kicked_after_commit_by_a_thread_and_share_the_kick(monkeypatch: pytest.MonkeyPatch) -> None:
    # The broker's round trip is not the request's: the request returns while its kick is
    # still being sent, and requests committed meanwhile are seen by the next round.
    queues_purge()
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    sending, release = threading.Event(), threading.Event()
    send = lanes._send
    sent: list[int] = []

    def slow_send(chain_id: int) -> None:
        sending.set()
        assert release.wait(10)
        sent.append(chain_id)
        send(chain_id)

    monkeypatch.setattr(lanes, "_send", slow_send)
    try:
        relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-0")
        assert sending.wait(5)  # the thread is in the broker's round trip; the request returned
        for n in range(1, 20):
            relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key=f"k-{n}")
        assert not lanes.lane_kicks_flush(timeout=0.2)  # still held
        release.set()
        assert lanes.lane_kicks_flush(timeout=10)
        assert sent == [chain.pk, chain.pk]  # one round for the first, one for the 19 after it
        assert queue_depth("relay") == 1  # and the second found the first kick queued
    finally:
        release.set()
        lanes.lane_kicks_flush(timeout=10)
        lanes.lane_kick_started(chain_id=chain.pk)
        queues_purge()


@pytest.mark.django_db(transaction=True)
def test_a_kick_that_cannot_be_sent_is_logged_and_the_request_stands(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")

    def broker_down(chain_id: int) -> None:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(lanes, "_send", broker_down)
    tx = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-1")
    assert lanes.lane_kicks_flush(timeout=10)
    assert RelayTransaction.objects.filter(pk=tx.pk, workflow_run=None).exists()  # for the monitor's orphan check
    assert f"could not kick the lane of chain {chain.pk}; the relayer monitor will" in caplog.text
