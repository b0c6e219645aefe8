"""Getting a batch's signed bytes to the node in nonce order: one batch sends to a chain at a
time (sending_lock), and it sends first whatever other batches signed below its nonces and have
not sent (unsent_before)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection
from django.db.models import Q

from relayer.models import Broadcast, BroadcastKind, RelayTransaction, TxPhase


def unsent_before(run_id: uuid.UUID, txs: list[RelayTransaction]) -> list[str]:
    """The stored bytes of requests of other batches, signed at lower nonces of these signers
    and not broadcast yet (their batch's broadcast has not run, or its worker died before it):
    sent first, so the node gets every signer's nonces in order. A batch signs after the one
    before it, but its broadcast can overtake that one's; the node then holds nonces it cannot
    mine yet, and this batch waits on a broadcast that has not run
    (tests/relayer/test_broadcast_order.py). Their own broadcast sends them again, and the
    node answers "already known"."""
    lowest: dict[int, int] = {}
    for tx in txs:
        assert tx.nonce is not None  # a broadcast sends signed requests only
        lowest[tx.signer_id] = min(lowest.get(tx.signer_id, tx.nonce), tx.nonce)
    below = Q()
    for signer_id, nonce in lowest.items():
        below |= Q(transaction__signer_id=signer_id, nonce__lt=nonce)
    # Broadcasts not sent yet are few, and broadcast_unsent_idx holds just them.
    return list(
        Broadcast.objects.filter(
            below,
            sent_at__isnull=True,
            kind=BroadcastKind.ORIGINAL,
            transaction__chain_id=txs[0].chain_id,
            transaction__phase=TxPhase.SUBMITTING,
        )
        .exclude(transaction__workflow_run_id=run_id)
        .order_by("transaction__signer_id", "nonce")
        .values_list("raw_tx", flat=True)
    )


# The first bytes of the one-bigint advisory lock that serializes a chain's broadcasts: ASCII
# "relay", then the chain id (its low 24 bits; two chains sharing a key only wait for each other).
_SENDING_LOCK = 0x72656C6179 << 24


@contextmanager
def sending_lock(chain_id: int) -> Iterator[None]:
    """One batch at a time sends to a chain, so one signer's batches reach the node in turn,
    not interleaved, and each sends what is still unsent below its nonces first
    (unsent_before). A session lock: a worker that dies holding it frees it with its
    connection."""
    key = _SENDING_LOCK | (chain_id & 0xFFFFFF)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
