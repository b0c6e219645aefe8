"""Nonces, serialized per (signer, chain) by a row lock in PostgreSQL."""

from __future__ import annotations

from django.db import IntegrityError, transaction

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


def nonce_allocate(*, signer: SigningKey, chain: Chain, count: int = 1) -> int:
    """Takes the next `count` consecutive nonces and returns the first. Must run inside the
    transaction that stores what uses them: if that transaction rolls back, they were never
    taken. Raises NonceCursor.DoesNotExist if nonce_cursor_ensure has not run."""
    cursor = NonceCursor.objects.select_for_update().get(signer=signer, chain=chain)
    nonce = cursor.next_nonce
    cursor.next_nonce = nonce + count
    cursor.save(update_fields=["next_nonce", "updated_at"])
    return nonce


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
