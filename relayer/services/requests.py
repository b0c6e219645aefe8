"""Asking for a relay: validate, record, and have the chain's lane pick it up after commit.

A request does not start a workflow of its own: the lane (relayer/services/batches.py) gathers
the pending requests on one chain into a batch, and the batch is the workflow.
That is what makes the relayer fast: one nonce lock, one key decryption and one JSON-RPC round
trip per step for the whole batch, instead of per transaction."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, transaction
from eth_utils import to_checksum_address

from orchestrator.infra.errors import Conflict, DomainError
from orchestrator.infra.observability import current_correlation_id, new_correlation_id
from relayer.models import Chain, RelayTransaction, SigningKey
from relayer.services.lanes import lane_kick

RELAY_WORKFLOW = "relay.batch"

_ADDRESS = re.compile(r"(0[xX])?[0-9a-fA-F]{40}")  # what eth_utils' is_address takes


# What to call when a relay finishes, by the kind of object that asked for it
# (requested_by[0]): fn(relay_transaction). Called after the finishing transaction commits.
FINISH_LISTENERS: dict[str, Callable[[RelayTransaction], None]] = {}


def on_relay_finished(kind: str) -> Callable[[Callable[[RelayTransaction], None]], Callable[[RelayTransaction], None]]:
    """Registers a listener, so a workflow waiting on relays is woken instead of polling."""

    def register(fn: Callable[[RelayTransaction], None]) -> Callable[[RelayTransaction], None]:
        FINISH_LISTENERS[kind] = fn
        return fn

    return register


class InvalidRelayRequest(DomainError, ValueError):
    """The request is malformed: bad address (or checksum), negative value, data that is not hex.
    (Still a ValueError, as it always was, for callers that catch that.)"""

    code = "invalid_relay_request"


class RelayConflict(Conflict):
    """The idempotency key was used before for a different transaction (409, as the API's own
    Idempotency-Key reuse)."""

    code = "idempotency_key_reused"


@lru_cache(maxsize=4096)
def _checksummed(address: str) -> str:
    # Requests go to few addresses (vaults, modules, tokens), and checksumming hashes the
    # address: 20 us of a request's 300-500 (eth_utils' is_address and is_checksum_address each
    # did it again, before: a fifth of a request's CPU time).
    return to_checksum_address(address)


def _normalise(to: str, value: int, data: str) -> tuple[str, int, str]:
    if not isinstance(to, str) or not _ADDRESS.fullmatch(to):
        raise InvalidRelayRequest(f"'to' is not an address: {to!r}")
    checksummed = _checksummed(to)
    digits = to[-40:]
    if digits != digits.lower() and digits != digits.upper() and digits != checksummed[2:]:
        # Mixed case is an EIP-55 checksum, and a wrong one is most likely a typo.
        raise InvalidRelayRequest(f"'to' has an invalid EIP-55 checksum: {to!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**256:
        raise InvalidRelayRequest("'value' must be a whole number of wei between 0 and 2**256-1")
    data = (data or "0x").lower()
    body = data.removeprefix("0x")
    if not data.startswith("0x") or len(body) % 2 or any(c not in "0123456789abcdef" for c in body):
        raise InvalidRelayRequest("'data' must be 0x-prefixed hex bytes")
    return checksummed, value, data


def relay_request(
    *,
    signer: SigningKey,
    chain: Chain,
    to: str,
    idempotency_key: str,
    value: int = 0,
    data: str = "0x",
    requested_by: tuple[str, str] = ("", ""),
    correlation_id: str | None = None,
    not_after: datetime | None = None,
    after: RelayTransaction | None = None,
    requester_run_id: Any = None,
) -> RelayTransaction:
    """Records a transaction to relay; after commit the chain's lane batches and sends it.

    `after`: a request of the same signer and chain this one depends on. It is sent with or
    after it (never before), at a later nonce, simulated on the state it leaves, and fails if
    it fails: a sequence can be requested at once rather than one confirmation at a time.
    `requester_run_id`: the workflow run that asked, whose transaction id becomes this
    request's hash once it is signed (relayer/services/requesters.py).

    The same idempotency key returns the same RelayTransaction and sends nothing twice.
    Raises InvalidRelayRequest for bad input and RelayConflict when the key was used for a
    different transaction."""
    to, value, data = _normalise(to, value, data)
    if after is not None and (after.signer_id, after.chain_id) != (signer.pk, chain.pk):
        raise InvalidRelayRequest("'after' must be a request of the same signer on the same chain")
    wanted = {
        "signer_id": signer.pk,
        "chain_id": chain.pk,
        "to": to,
        "value": value,
        "data": data,
        "after_id": after.pk if after is not None else None,
    }
    ambient = current_correlation_id()
    row = RelayTransaction(
        idempotency_key=idempotency_key,
        requested_by_kind=requested_by[0],
        requested_by_id=str(requested_by[1]),
        correlation_id=correlation_id or (ambient if ambient != "-" else new_correlation_id()),
        not_after=not_after,
        requester_run_id=requester_run_id,
        **wanted,
    )
    try:
        # Inside a caller's transaction, a savepoint keeps a reused key from breaking it. Outside
        # one, the INSERT commits on its own (autocommit), as durably, without the BEGIN and
        # COMMIT round trips of a transaction around one statement.
        with transaction.atomic() if transaction.get_connection().in_atomic_block else nullcontext():
            row.save(force_insert=True)
        tx = row
    except IntegrityError:
        existing = RelayTransaction.objects.get(idempotency_key=idempotency_key)
        seen = {k: getattr(existing, k) for k in wanted}
        if seen != wanted:
            raise RelayConflict(f"idempotency key {idempotency_key!r} was used for another transaction") from None
        return existing
    lane_kick(chain_id=chain.pk)
    return tx
