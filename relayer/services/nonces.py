"""Nonces, serialized per (signer, chain) by a row lock in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping

from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestrator.infra.bulk import rows_update
from relayer.models import Chain, NonceCursor, SigningKey
from relayer.rpc import as_address, web3_for

# Cursors are never deleted, so once seen they need not be looked up again in this process.
_known_cursors: set[tuple[int, int]] = set()


def nonce_cursor_ensure(*, signer: SigningKey, chain: Chain) -> None:
    """Creates the cursor from the chain's pending nonce the first time a signer relays there.

    Called before the transaction that allocates (it does RPC). Two workers racing here both
    read the same pending nonce; the unique constraint keeps one cursor."""
    if (signer.pk, chain.pk) in _known_cursors:
        return
    if NonceCursor.objects.filter(signer=signer, chain=chain).exists():
        _known_cursors.add((signer.pk, chain.pk))
        return
    pending = web3_for(chain.rpc_url).eth.get_transaction_count(as_address(signer.address), "pending")
    try:
        with transaction.atomic():
            NonceCursor.objects.create(signer=signer, chain=chain, next_nonce=pending)
    except IntegrityError:
        pass  # another worker created it first


def nonces_allocate(*, chain: Chain, counts: Mapping[int, int]) -> dict[int, int]:
    """Takes the next `counts[signer_id]` consecutive nonces of each signer and returns each
    signer's first. Must run inside the transaction that stores what uses them: if that
    transaction rolls back, they were never taken. The cursors are locked in signer order (two
    batches sharing signers cannot deadlock) by one statement and moved by another, whatever
    the number of signers (a lock and a write per signer were two round trips each). Raises
    NonceCursor.DoesNotExist if nonce_cursor_ensure has not run for one of them."""
    cursors = list(
        NonceCursor.objects.select_for_update().filter(chain=chain, signer_id__in=list(counts)).order_by("signer_id")
    )
    if len(cursors) != len(counts):
        missing = set(counts) - {cursor.signer_id for cursor in cursors}
        raise NonceCursor.DoesNotExist(f"no nonce cursor on chain {chain.pk} for signer(s) {sorted(missing)}")
    firsts, now = {}, timezone.now()
    for cursor in cursors:
        firsts[cursor.signer_id] = cursor.next_nonce
        cursor.next_nonce += counts[cursor.signer_id]
        cursor.updated_at = now
    rows_update(NonceCursor, cursors, ["next_nonce", "updated_at"])
    return firsts


def nonce_resync(*, signer: SigningKey, chain: Chain) -> int:
    """Moves the cursor up to the chain's pending nonce (after "nonce too low" for a nonce we
    never used: someone else sent from this key). Never moves it down."""
    pending = web3_for(chain.rpc_url).eth.get_transaction_count(as_address(signer.address), "pending")
    with transaction.atomic():
        cursor = NonceCursor.objects.select_for_update().get(signer=signer, chain=chain)
        if pending > cursor.next_nonce:
            cursor.next_nonce = pending
            cursor.save(update_fields=["next_nonce", "updated_at"])
        return cursor.next_nonce
