"""The seam between the apps that store secrets and the key manager that seals them.

Infrastructure may import no app, yet it stores answers that hold secrets (the idempotency
records of `POST /v1/config` carry the config's hmacKey). So the relayer registers its key
manager's sealing here when Django starts (`relayer.apps`), and whatever stores a sealed secret
registers a re-sealer, by kind, that `./manage.py keys rotate-master` runs after a new master
key is added: signing keys, config HMAC keys, idempotency answers. Nothing here knows a master
key; a sealed value is only ever opened by the sealer that made it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class SealedSecret:
    """A secret encrypted under master key `version` (AES-256-GCM: nonce and ciphertext)."""

    version: int
    nonce: bytes
    ciphertext: bytes


class Sealer(Protocol):
    def seal(self, plaintext: bytes, *, context: str) -> SealedSecret:
        """Encrypts under the current master key, bound to `context` (what the secret is for)."""
        ...

    def open(self, sealed: SealedSecret, *, context: str) -> bytes:
        """Raises a DomainError (a server failure) when the master key is missing or the
        ciphertext was tampered with or sealed for another context."""
        ...

    def current_version(self) -> int:
        """The master key version `seal` encrypts under: anything sealed under another is stale."""
        ...


_sealer: Sealer | None = None
# kind (as the rotation reports it) -> re-seals whatever is not under the current version, and
# returns how many it re-sealed.
_resealers: dict[str, Callable[[], int]] = {}


def sealer_register(sealer: Sealer) -> None:
    global _sealer
    _sealer = sealer


def sealer() -> Sealer:
    if _sealer is None:
        # Storing the secret in the clear instead would be silent; refuse.
        raise ImproperlyConfigured("No sealer is registered: the relayer app must be installed.")
    return _sealer


def resealer_register(kind: str, reseal: Callable[[], int]) -> None:
    """Registering a kind again replaces it (an app's ready() may run twice in tests)."""
    _resealers[kind] = reseal


def resealers() -> dict[str, Callable[[], int]]:
    return dict(_resealers)


def sealed_json(sealed: SealedSecret) -> dict[str, object]:
    """A sealed secret as JSON, for a JSONField: base64 nonce and ciphertext."""
    return {
        "version": sealed.version,
        "nonce": base64.b64encode(sealed.nonce).decode(),
        "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
    }


def sealed_from_json(value: dict[str, object]) -> SealedSecret:
    version, nonce, ciphertext = value["version"], value["nonce"], value["ciphertext"]
    assert isinstance(version, int) and isinstance(nonce, str) and isinstance(ciphertext, str)
    return SealedSecret(version, base64.b64decode(nonce), base64.b64decode(ciphertext))
