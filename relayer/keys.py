"""The key manager: keys generated with eth-account, encrypted at rest, used only to sign.

`KeyManager` is the one interface the rest of the system uses; `LocalKeyManager` keeps keys in
the database under AES-256-GCM. A KMS or HashiCorp Vault backend would implement the same
methods and keep the private key outside this process altogether.

Master keys come from the environment: KEY_MASTER_KEYS="2:<base64 32 bytes>,1:<base64 ...>"
(the highest version encrypts; older ones only decrypt until `manage.py keys rotate-master`
has re-sealed everything: `master_key_rotate` runs every re-sealer registered with
orchestrator.infra.sealing, this module's signing keys first). Without it, a development master
key is generated once under VAR_DIR; never run that way with real funds.

A private key never leaves this module: not in a return value, a log line, an exception
message, an admin page or a repr."""

from __future__ import annotations

import base64
import logging
import os
import secrets
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Protocol

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_account.messages import SignableMessage, encode_defunct
from eth_account.types import TransactionDictType
from eth_utils import keccak

from orchestrator.infra.eip712 import typed_data_signable
from orchestrator.infra.eip1559 import sign_dynamic_fee
from orchestrator.infra.errors import DomainError
from orchestrator.infra.sealing import SealedSecret as SealedSecret
from orchestrator.infra.sealing import resealers
from relayer.models import KeyPurpose, SigningKey

logger = logging.getLogger("relayer.keys")


class KeyManagerError(DomainError):
    """Key material unavailable: unknown key, wrong master key, tampered ciphertext. Nothing a
    client can fix: were one to reach the API, it is the server's failure (500)."""

    code = "key_unavailable"
    http_status = 500


@dataclass(frozen=True)
class MasterKeys:
    current: int
    keys: dict[int, bytes]

    def aead(self, version: int) -> AESGCM:
        try:
            return AESGCM(self.keys[version])
        except KeyError:
            raise KeyManagerError(f"master key version {version} is not configured") from None


def _parse_master_keys(raw: str) -> MasterKeys:
    keys: dict[int, bytes] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        version, _, encoded = part.partition(":")
        try:
            key = base64.b64decode(encoded, validate=True)
            number = int(version)
        except ValueError:
            raise ImproperlyConfigured("KEY_MASTER_KEYS must look like '2:<base64>,1:<base64>'") from None
        if len(key) != 32 or number < 1:
            raise ImproperlyConfigured("KEY_MASTER_KEYS: each key is 32 bytes (base64) with a version >= 1")
        if number in keys:
            # One would silently replace the other, and keys under it would stop decrypting.
            raise ImproperlyConfigured(f"KEY_MASTER_KEYS names version {number} twice")
        keys[number] = key
    if not keys:
        raise ImproperlyConfigured("KEY_MASTER_KEYS holds no key")
    return MasterKeys(current=max(keys), keys=keys)


def new_master_key_entry(version: int) -> str:
    return f"{version}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


@cache
def master_keys() -> MasterKeys:
    raw = settings.KEY_MASTER_KEYS
    if raw:
        return _parse_master_keys(raw)
    path = Path(settings.VAR_DIR) / "master-keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_master_key_entry(1))
        logger.warning("KEY_MASTER_KEYS is not set: generated a development master key in %s", path)
    return _parse_master_keys(path.read_text())


def _aad(address: str, purpose: str) -> bytes:
    return f"vault-orchestrator:{address.lower()}:{purpose}".encode()


def _secret_aad(context: str) -> bytes:
    return f"vault-orchestrator:secret:{context}".encode()


def _seal(plaintext: bytes, aad: bytes) -> SealedSecret:
    """AES-256-GCM under the current master key, with a fresh 12-byte nonce."""
    masters = master_keys()
    nonce = secrets.token_bytes(12)
    return SealedSecret(masters.current, nonce, masters.aead(masters.current).encrypt(nonce, plaintext, aad))


def _open(sealed: SealedSecret, aad: bytes, *, what: str) -> bytes:
    """Raises KeyManagerError, naming `what` and never the plaintext, when the master key
    version is missing or the ciphertext does not decrypt."""
    try:
        return master_keys().aead(sealed.version).decrypt(bytes(sealed.nonce), bytes(sealed.ciphertext), aad)
    except (InvalidTag, ValueError):  # ValueError: a nonce of the wrong length
        raise KeyManagerError(f"{what} does not decrypt: wrong master key or tampered row") from None


def secret_seal(plaintext: bytes, *, context: str) -> SealedSecret:
    """Encrypts under the current master key; `context` (what the secret is for, e.g. the
    config id) is bound in as associated data, so the ciphertext only opens for that owner."""
    return _seal(plaintext, _secret_aad(context))


def secret_open(sealed: SealedSecret, *, context: str) -> bytes:
    """Raises KeyManagerError when the master key is missing or the row was tampered with."""
    return _open(sealed, _secret_aad(context), what=f"secret for {context}")


class MasterKeySealer:
    """The sealing the apps store secrets with (orchestrator.infra.sealing.Sealer), registered
    when the relayer app is ready."""

    def seal(self, plaintext: bytes, *, context: str) -> SealedSecret:
        return secret_seal(plaintext, context=context)

    def open(self, sealed: SealedSecret, *, context: str) -> bytes:
        return secret_open(sealed, context=context)

    def current_version(self) -> int:
        return master_keys().current


SIGNING_KEYS = "signing keys"


def master_key_rotate() -> dict[str, int]:
    """Re-seals everything not under the current master key: the signing keys, then every kind
    another app registered (config HMAC keys, idempotency answers, ...). Returns how many of
    each kind. Safe to run again: what is already current is left alone. Until it has run, the
    older master keys must stay in KEY_MASTER_KEYS."""
    counts = {SIGNING_KEYS: key_manager().rotate_master()}
    for kind, reseal in resealers().items():
        counts[kind] = reseal()
    return counts


class KeyManager(Protocol):
    def create_key(self, *, purpose: str, label: str = "") -> SigningKey: ...

    def sign_transaction(self, *, key: SigningKey, tx: TransactionDictType) -> SignedTransaction: ...

    def sign_transactions(self, *, key: SigningKey, txs: list[TransactionDictType]) -> list[SignedTransaction]: ...

    def sign_typed_data(
        self, *, key: SigningKey, domain: dict[str, Any], types: dict[str, Any], message: dict[str, Any]
    ) -> str: ...

    def sign_message(self, *, key: SigningKey, text: str) -> str: ...


class LocalKeyManager:
    backend = "local"

    def create_key(self, *, purpose: str, label: str = "") -> SigningKey:
        if purpose not in KeyPurpose.values:
            raise KeyManagerError(f"unknown key purpose {purpose!r}")
        account = Account.create()
        sealed = _seal(bytes(account.key), _aad(account.address, purpose))
        return SigningKey.objects.create(
            address=account.address,
            purpose=purpose,
            label=label[:200],
            backend=self.backend,
            master_key_version=sealed.version,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
        )

    def _private_key(self, key: SigningKey) -> bytes:
        sealed = SealedSecret(key.master_key_version, bytes(key.nonce), bytes(key.ciphertext))
        return _open(sealed, _aad(key.address, key.purpose), what=f"key {key.address}")

    def sign_transaction(self, *, key: SigningKey, tx: TransactionDictType) -> SignedTransaction:
        return self._opened(key).sign_transaction(tx)

    def sign_transactions(self, *, key: SigningKey, txs: list[TransactionDictType]) -> list[SignedTransaction]:
        """Signs a relay batch with the key opened once."""
        opened = self._opened(key)
        return [opened.sign_transaction(tx) for tx in txs]

    def sign_typed_data(
        self, *, key: SigningKey, domain: dict[str, Any], types: dict[str, Any], message: dict[str, Any]
    ) -> str:
        signable = typed_data_signable(domain=domain, types=types, message=message)
        return self._signature(key, signable)

    def sign_message(self, *, key: SigningKey, text: str) -> str:
        return self._signature(key, encode_defunct(text=text))

    def _signature(self, key: SigningKey, signable: SignableMessage) -> str:
        """The 0x-prefixed hex signature of `signable` (EIP-191, or EIP-712 typed data)."""
        return self._opened(key).sign(signable)

    def _opened(self, key: SigningKey) -> _Signer:
        master = master_keys().keys.get(key.master_key_version)
        if master is None:
            raise KeyManagerError(f"master key version {key.master_key_version} is not configured")
        return _signer(
            master, key.address, key.purpose, key.master_key_version, bytes(key.nonce), bytes(key.ciphertext)
        )

    def rotate_master(self) -> int:
        """Re-encrypts every key not under the current master key version. Returns how many."""
        masters = master_keys()
        rotated = 0
        stale = SigningKey.objects.filter(backend=self.backend).exclude(master_key_version=masters.current)
        for key_id in stale.values_list("id", flat=True):
            with transaction.atomic():
                key = SigningKey.objects.select_for_update().get(pk=key_id)
                if key.master_key_version == masters.current:
                    continue
                sealed = _seal(self._private_key(key), _aad(key.address, key.purpose))
                key.master_key_version, key.nonce, key.ciphertext = sealed.version, sealed.nonce, sealed.ciphertext
                key.rotated_at = timezone.now()
                key.save(update_fields=["ciphertext", "nonce", "master_key_version", "rotated_at"])
                rotated += 1
        return rotated


class _Signer:
    """A key opened for signing: libsecp256k1's key object. Every hook carries an
    x-verifying-signature; through eth_account each one decrypted the key and derived its public
    key again (twice), 0.6 ms of the ~1 ms a hook cost. A message signature is eth_account's,
    byte for byte: the same RFC 6979 deterministic, low-s signature of the same EIP-191 hash,
    r || s || v with v = 27 + recovery id (tests/relayer/test_keys_signer.py). A relay's type-2
    transaction is encoded and signed directly (orchestrator/infra/eip1559.py), anything else
    by eth_account."""

    __slots__ = ("_secret", "address")

    def __init__(self, address: str, private_key: bytes) -> None:
        self.address = address
        self._secret = coincurve.PrivateKey(private_key)

    def __repr__(self) -> str:  # never the key
        return f"<signer {self.address}>"

    def sign(self, signable: SignableMessage) -> str:
        if len(signable.version) != 1:  # as eth_account: EIP-191 versions are one byte
            raise ValueError("EIP-191 message versions are one byte")
        digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
        signature = self._secret.sign_recoverable(digest, hasher=None)
        return "0x" + (signature[:64] + bytes([signature[64] + 27])).hex()

    def sign_transaction(self, tx: TransactionDictType) -> SignedTransaction:
        signed = sign_dynamic_fee(self._secret, tx)
        if signed is None:
            signed = Account.sign_transaction(tx, self._secret.secret)
        return signed


@lru_cache(maxsize=256)
def _signer(master: bytes, address: str, purpose: str, version: int, nonce: bytes, ciphertext: bytes) -> _Signer:
    """Opens a key once per process, in memory only (never written, logged or shown). Keyed by
    the row's sealed bytes and the master key that opens them: a re-sealed or tampered row, or a
    master key no longer configured, is opened (or refused) afresh, never served from here."""
    sealed = SealedSecret(version, nonce, ciphertext)
    return _Signer(address, _open(sealed, _aad(address, purpose), what=f"key {address}"))


def key_manager() -> LocalKeyManager:
    return LocalKeyManager()
