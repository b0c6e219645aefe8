"""Idempotency-Key for POSTs that create things (docs/api.md, "Conventions").

The same key with the same body returns the first response again (same status, same body,
nothing created twice); the same key with a different body is 409 idempotency_key_reused.
The record is inserted first, in the transaction that does the work: a concurrent request with
the same key waits on the unique index until the first commits, then replays its answer."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from rest_framework.request import Request
from rest_framework.response import Response

from orchestrator.infra.errors import Conflict, DomainError
from orchestrator.infra.models import IdempotencyRecord

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def _fingerprint(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def wrapper(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return view(self, request, *args, **kwargs)
        if not key or len(key) > MAX_KEY_LENGTH:
            raise DomainError(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters.", code="invalid_idempotency_key")
        fingerprint = _fingerprint(request)
        owner = request.user  # authenticated: every POST that creates something needs a token
        assert owner.is_authenticated
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(owner=owner, key=key, fingerprint=fingerprint)
                response = view(self, request, *args, **kwargs)
                if response.status_code >= 500:
                    raise _DontRemember(response)
                record.status_code = response.status_code
                record.body = response.data
                record.save(update_fields=["status_code", "body"])
                return response
        except _DontRemember as failed:
            return failed.response
        except IntegrityError:
            pass
        earlier = IdempotencyRecord.objects.get(owner=owner, key=key)
        if earlier.fingerprint != fingerprint:
            raise Conflict(f"{HEADER} {key!r} was used with a different request.", code="idempotency_key_reused")
        return Response(earlier.body, status=earlier.status_code)

    return wrapper


class _DontRemember(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response
