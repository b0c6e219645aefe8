"""Approvers' wallets: an approver registers the address they sign Safe transactions with by
signing an EIP-4361 (Sign-In with Ethereum) message the server issued to them.

A registration proves three things: the message is one this server issued to this user, not
used and not expired (the challenge row, locked and marked used in the same transaction that
writes the wallet, so a message registers once); the signature is canonical (the one parser,
orchestrator/infra/signatures.py); and it recovers to the address the challenge names. An
address belongs to one user; registering again replaces the user's wallet.

On a development chain an approver may instead let the server hold a key for them
(`dev_wallet_enable`): it goes through the same challenge and `wallet_register`, signed by the
key manager, and is flagged `development` so nothing mistakes it for a wallet a person holds.

Row locks: the challenge first, then the wallet rows."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from eth_account.messages import encode_defunct
from eth_utils import is_address, to_checksum_address

from approvals.models import ApproverWallet, WalletChallenge
from orchestrator.infra.errors import Conflict, DomainError
from orchestrator.infra.signatures import MalformedSignature, Recovered, signature_recover
from relayer.keys import key_manager
from relayer.models import Chain, KeyPurpose, SigningKey

CHALLENGE_TTL = timedelta(minutes=10)
NONCE_LENGTH = 17  # EIP-4361 asks for at least 8 alphanumerics; 17 of 62 is ~101 bits
_ALPHANUMERIC = string.ascii_letters + string.digits
_NONCE_LINE = re.compile(r"^Nonce: ([A-Za-z0-9]+)$", re.MULTILINE)


class InvalidChallenge(DomainError):
    """The message is not one issued to this user, or it was used or has expired: the proof of
    the wallet fails, as a wrong signature does (401)."""

    code = "invalid_challenge"
    http_status = 401


class InvalidWalletSignature(DomainError):
    """The signature is not 65 canonical bytes (signatures.py says why)."""

    code = "invalid_signature"
    http_status = 401


class WalletSignatureMismatch(DomainError):
    """The signature is canonical but recovers to another address than the challenge's."""

    code = "wallet_signature_mismatch"
    http_status = 401


class WalletTaken(Conflict):
    """Another user registered this address."""

    code = "wallet_taken"


class NotADevelopmentChain(Conflict):
    """A server-held wallet was asked for on a chain with real funds."""

    code = "not_a_development_chain"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def siwe_message(
    *,
    domain: str,
    address: str,
    statement: str,
    uri: str,
    chain_id: int,
    nonce: str,
    issued_at: datetime,
    expires_at: datetime,
) -> str:
    """The EIP-4361 text, field by field as the spec orders them (no trailing newline)."""
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n"
        f"{address}\n"
        f"\n"
        f"{statement}\n"
        f"\n"
        f"URI: {uri}\n"
        f"Version: 1\n"
        f"Chain ID: {chain_id}\n"
        f"Nonce: {nonce}\n"
        f"Issued At: {_rfc3339(issued_at)}\n"
        f"Expiration Time: {_rfc3339(expires_at)}"
    )


def _statement(user: Any) -> str:
    # EIP-4361: the statement is one line; a username holds no line break, but say so anyway.
    name = " ".join(user.get_username().split())
    return f"Register this wallet as {name}'s approver wallet for Vault Orchestrator."


def wallet_challenge_issue(*, user: Any, address: str, domain: str, uri: str, chain_id: int) -> WalletChallenge:
    """A fresh EIP-4361 message for `user` to sign with `address`, good for CHALLENGE_TTL and
    once. Raises DomainError (400 invalid) for an address that is not one."""
    if not is_address(address):
        raise DomainError(
            "That is not an address: 0x and 40 hex digits.", code="invalid", fields={"address": "Not an address."}
        )
    address = to_checksum_address(address)
    # Whole seconds: the text carries them, and the row's times are what the text says.
    issued = timezone.now().replace(microsecond=0)
    expires = issued + CHALLENGE_TTL
    nonce = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(NONCE_LENGTH))
    message = siwe_message(
        domain=domain,
        address=address,
        statement=_statement(user),
        uri=uri,
        chain_id=chain_id,
        nonce=nonce,
        issued_at=issued,
        expires_at=expires,
    )
    return WalletChallenge.objects.create(
        nonce=nonce, user=user, address=address, message=message, issued_at=issued, expires_at=expires
    )


def _challenge_locked(*, user: Any, message: str) -> WalletChallenge:
    """The unused, unexpired challenge whose text is exactly `message`, issued to `user`, row
    locked. Raises InvalidChallenge saying what to do."""
    again = "Ask for a new challenge (POST /v1/wallets/challenge) and sign that."
    found = _NONCE_LINE.search(message)
    challenge = (
        WalletChallenge.objects.select_for_update().filter(nonce=found.group(1)).first() if found is not None else None
    )
    # Byte for byte: a wallet that rewrote the text (line endings, a field) signed something else.
    if challenge is None or challenge.user_id != user.pk or challenge.message != message:
        raise InvalidChallenge(f"This message was not issued to you by this server. {again}")
    if challenge.used_at is not None:
        raise InvalidChallenge(f"This message was used already. {again}")
    if challenge.expires_at <= timezone.now():
        raise InvalidChallenge(f"This message expired at {_rfc3339(challenge.expires_at)}. {again}")
    return challenge


def _recovered(message: str, signature: str) -> Recovered:
    try:
        return signature_recover(encode_defunct(text=message), signature)
    except MalformedSignature as exc:
        raise InvalidWalletSignature(str(exc), fields={"signature": str(exc)}) from None


def wallet_register(*, user: Any, message: str, signature: str, development: bool = False) -> ApproverWallet:
    """Registers the address of the challenge `message` as `user`'s wallet, given its EIP-191
    personal_sign `signature`; replaces a wallet the user had. `development` is for
    dev_wallet_enable only (a key the server holds). Raises InvalidChallenge (401),
    InvalidWalletSignature (401), WalletSignatureMismatch (401) and WalletTaken (409)."""
    with transaction.atomic():
        challenge = _challenge_locked(user=user, message=message)
        recovered = _recovered(message, signature)
        signer = recovered.signer
        if signer != challenge.address:
            raise WalletSignatureMismatch(
                f"The signature is from {signer}, not from {challenge.address}: sign with the wallet the "
                "challenge names, or ask for a challenge for this one."
            )
        taken = f"{signer} is registered by another user; connect a wallet of your own."
        if ApproverWallet.objects.filter(address=signer).exclude(user=user).exists():
            raise WalletTaken(taken)
        now = timezone.now()
        challenge.used_at = now
        challenge.save(update_fields=["used_at"])
        values = {
            "address": signer,
            "proven_at": now,
            "message": message,
            "signature": recovered.signature.hex(),  # canonical: v 27/28, lower case
            "development": development,
        }
        try:
            # A savepoint: the unique address may still collide with a registration committing now.
            with transaction.atomic():
                wallet, _ = ApproverWallet.objects.select_for_update().update_or_create(user=user, defaults=values)
        except IntegrityError:
            raise WalletTaken(taken) from None
    return wallet


def wallet_get(user: Any) -> ApproverWallet | None:
    """The user's registered wallet row, or None."""
    return ApproverWallet.objects.filter(user_id=user.pk).first()


def wallet_of(user: Any) -> str | None:
    """The user's registered address (checksummed), or None."""
    return ApproverWallet.objects.filter(user_id=user.pk).values_list("address", flat=True).first()


def users_by_wallet(addresses: Iterable[str]) -> dict[str, Any]:
    """The users whose registered wallets are among `addresses`, keyed by the address as given
    (any case); addresses nobody registered, or that are none, are left out."""
    given = {a: to_checksum_address(a) for a in addresses if isinstance(a, str) and is_address(a)}
    wallets = ApproverWallet.objects.filter(address__in=set(given.values())).select_related("user")
    by_address = {w.address: w.user for w in wallets}
    return {a: by_address[c] for a, c in given.items() if c in by_address}


# --- development wallets ------------------------------------------------------------------


def configured_chain() -> Chain | None:
    """The chain this deployment runs on (settings.CHAIN_ID), if its row exists."""
    return Chain.objects.filter(chain_id=settings.CHAIN_ID).first()


def dev_wallets_allowed() -> bool:
    chain = configured_chain()
    return chain is not None and chain.counts_as_development


def dev_wallet_enable(*, user: Any, chain: Chain) -> ApproverWallet:
    """Gives `user` a wallet whose key the server holds (key manager, purpose APPROVER), proven
    through the same challenge and wallet_register as any other. Only on a development chain:
    elsewhere raises NotADevelopmentChain (409). Safe to run twice: a development wallet the
    user has is kept."""
    if not chain.counts_as_development:
        raise NotADevelopmentChain(
            f"{chain} is not a development chain: connect a wallet you hold instead. The server holds "
            "keys for approvers only on development chains."
        )
    existing = ApproverWallet.objects.filter(user_id=user.pk, development=True).first()
    if existing is not None and dev_wallet_key(user) is not None:
        return existing
    base = urlsplit(settings.PUBLIC_BASE_URL)
    manager = key_manager()
    with transaction.atomic():
        key = manager.create_key(purpose=KeyPurpose.APPROVER, label=f"development wallet of {user.get_username()}")
        challenge = wallet_challenge_issue(
            user=user, address=key.address, domain=base.netloc, uri=settings.PUBLIC_BASE_URL, chain_id=chain.chain_id
        )
        signature = manager.sign_message(key=key, text=challenge.message)
        return wallet_register(user=user, message=challenge.message, signature=signature, development=True)


def dev_wallet_key(user: Any) -> SigningKey | None:
    """The key behind `user`'s development wallet, to sign with through the key manager
    (sign_typed_data); None when the user's wallet is one they hold, or they have none. The
    caller signs only for a development chain (Chain.counts_as_development)."""
    wallet = ApproverWallet.objects.filter(user_id=user.pk, development=True).first()
    if wallet is None:
        return None
    return SigningKey.objects.filter(address=wallet.address, purpose=KeyPurpose.APPROVER).first()
