"""relayer/services/lanes.py: lane kicks on the broker (Redis) absorb each other until one
starts. No worker picks them up."""

from __future__ import annotations

import uuid

import pytest

from orchestrator.infra.broker import queue_depth, queues_purge
from relayer.keys import key_manager
from relayer.services import lanes
from relayer.services.requests import relay_request
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
