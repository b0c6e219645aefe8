"""Idempotency-Key for POSTs that create things (docs/api.md, "Conventions").

The same key with the same body returns the first response again (same status, same body,
nothing created twice); the same key with a different body is 409 idempotency_key_reused.
The record is inserted first, in the transaction that does the work: a concurrent request with
the same key waits on the unique index until the first commits, then replays its answer.

A view that answers a secret (the hmacKey of POST /v1/config) names it: `@idempotent(secret=
("hmacKey",))`. The stored answer then holds null in its place and the secret is sealed by the
key manager (orchestrator/infra/sealing.py) in `sealed`, bound to the record; a replay opens it
and answers exactly what the first request got. A database dump holds no secret in the clear."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any, overload

from django.db import IntegrityError, transaction
from rest_framework.request import Request
from rest_framework.response import Response

from orchestrator.infra.errors import Conflict, DomainError
from orchestrator.infra.models import IdempotencyRecord
from orchestrator.infra.sealing import SealedSecret, sealed_from_json, sealed_json, sealer

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def _fingerprint(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


View = Callable[..., Response]


@overload
def idempotent(view: View, /) -> View: ...


@overload
def idempotent(*, secret: tuple[str, ...]) -> Callable[[View], View]: ...


def idempotent(view: View | None = None, /, *, secret: tuple[str, ...] = ()) -> View | Callable[[View], View]:
    """`@idempotent`, or `@idempotent(secret=(field, ...))` for a view whose answer carries secrets
    (top-level fields) that must be stored sealed."""
    if view is None:
        return functools.partial(_idempotent, secret=secret)
    return _idempotent(view, secret=())


def _idempotent(view: View, *, secret: tuple[str, ...]) -> View:
    @functools.wraps(view)
    def wrapper(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return view(self, request, *args, **kwargs)
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():  # a NUL cannot be stored
            raise DomainError(
                f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters.", code="invalid_idempotency_key"
            )
        fingerprint = _fingerprint(request)
        owner = request.user  # authenticated: every POST that creates something needs a token
        assert owner.is_authenticated
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(owner=owner, key=key, fingerprint=fingerprint)
                response = view(self, request, *args, **kwargs)
                if response.status_code >= 400:  # only a success is remembered, and kept
                    raise _DontRemember(response)
                record.status_code = response.status_code
                record.body, record.sealed, record.sealed_version = answer_sealed(
                    response.data, secret=secret, record_id=record.pk
                )
                record.save(update_fields=["status_code", "body", "sealed", "sealed_version"])
                return response
        except _DontRemember as failed:
            return failed.response
        except IntegrityError:
            pass
        earlier = IdempotencyRecord.objects.get(owner=owner, key=key)
        if earlier.fingerprint != fingerprint:
            raise Conflict(f"{HEADER} {key!r} was used with a different request.", code="idempotency_key_reused")
        return Response(_replayed_answer(earlier), status=earlier.status_code)

    return wrapper


def _context(record_id: int, field: str) -> str:
    # Bound into the ciphertext: a sealed value copied to another record or field does not open.
    return f"idempotency:{record_id}:{field}"


def answer_sealed(data: Any, *, secret: tuple[str, ...], record_id: int) -> tuple[Any, dict[str, Any], int | None]:
    """The answer to store (each secret field null), the sealed secrets, and their master key
    version (None when the answer holds none)."""
    present = [f for f in secret if isinstance(data, dict) and data.get(f) is not None]
    if not present:
        return data, {}, None
    keys = sealer()
    sealed: dict[str, SealedSecret] = {
        field: keys.seal(json.dumps(data[field]).encode(), context=_context(record_id, field)) for field in present
    }
    body = {k: (None if k in sealed else v) for k, v in data.items()}
    return body, {f: sealed_json(s) for f, s in sealed.items()}, min(s.version for s in sealed.values())


def _replayed_answer(record: IdempotencyRecord) -> Any:
    """The first answer again, its secrets opened. A master key that is gone (dropped before
    `keys rotate-master` ran) is the server's failure: the sealer raises a 500 DomainError."""
    if not record.sealed or not isinstance(record.body, dict):
        return record.body
    keys = sealer()
    opened = {
        field: json.loads(keys.open(sealed_from_json(value), context=_context(record.pk, field)))
        for field, value in record.sealed.items()
    }
    return {k: opened.get(k, v) for k, v in record.body.items()}


def idempotency_reseal() -> int:
    """Re-seals the secrets of every stored answer not under the current master key (the
    rotation's "idempotency answers"). Returns how many records."""
    current = sealer().current_version()
    stale = IdempotencyRecord.objects.exclude(sealed_version=None).exclude(sealed_version=current)
    resealed = 0
    for record_id in stale.values_list("pk", flat=True):
        with transaction.atomic():
            record = IdempotencyRecord.objects.select_for_update().get(pk=record_id)
            if record.sealed_version in (None, current):
                continue
            answer = _replayed_answer(record)
            _, record.sealed, record.sealed_version = answer_sealed(
                answer, secret=tuple(record.sealed), record_id=record.pk
            )
            record.save(update_fields=["sealed", "sealed_version"])
            resealed += 1
    return resealed


class _DontRemember(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response
