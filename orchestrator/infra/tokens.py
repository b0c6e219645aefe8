"""API tokens (DRF's `rest_framework.authtoken`, header `Authorization: Token <token>`) stored as
a hash: a database dump or a backup holds no client's credential.

The client holds a random 40-hex-digit token; `authtoken_token.key` (DRF's Token model, unchanged)
holds `token_digest(token)`. The raw value exists only in the answer of `api_token_issue`, shown
once (`manage.py create_api_client`); a lost token is replaced, never read back."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.db import router, transaction
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

# DRF's own length: 20 random bytes as hex, 160 bits.
TOKEN_BYTES = 20


def token_digest(token: str) -> str:
    """What is stored for `token`: the first 40 hex digits (160 bits) of its SHA-256, so it fits
    DRF's `key` column (40 characters, the primary key) as it is.

    Unsalted and fast on purpose. Salts and slow hashes (PBKDF2, Argon2) protect passwords, which
    are few enough to guess one by one; a token is 160 random bits, so nobody can try enough
    guesses against its hash to matter, whatever the speed, and no precomputed table covers it.
    An unsalted digest is also what makes the lookup one indexed query: with a salt, every stored
    row would have to be hashed again on each request."""
    return hashlib.sha256(token.encode()).hexdigest()[:40]


def api_token_issue(*, user: Any) -> str:
    """Issues a new API token for `user` and returns it: the only time its raw value is known.
    Any previous token of `user` stops working. Written on `user`'s database (the soak driver's
    users live on another alias)."""
    token = secrets.token_hex(TOKEN_BYTES)
    tokens = Token.objects.db_manager(router.db_for_write(Token, instance=user))
    with transaction.atomic(using=tokens.db):
        tokens.filter(user=user).delete()
        tokens.create(user=user, key=token_digest(token))
    return token


class HashedTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, same header, looking up the digest of the token presented. The
    stored digest itself, presented as a token, is hashed again and so matches nothing.

    drf-spectacular's TokenScheme matches subclasses of TokenAuthentication: the OpenAPI schema
    keeps describing the same `Authorization: Token ...` scheme (`tokenAuth`)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        user, token = super().authenticate_credentials(token_digest(key))
        return user, token
