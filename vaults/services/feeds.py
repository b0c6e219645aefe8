"""Signed market feeds: verify, refuse what is bad, store what is good, start Flow A.

A feed is EIP-712 typed data signed by an allow-listed oracle key:

    domain  {"name": "Vault Orchestrator Feed", "version": "1"}
    types   MarketFeed(address oracle, uint256 timestamp, FeedEntry[] entries)
            FeedEntry(string protocol, string apy, string tvl, uint8 risk)
    message {"oracle": <address>, "timestamp": <unix seconds of the RFC 3339 time>,
             "entries": [{"protocol", "apy", "tvl", "risk"}]}   apy and tvl as the decimal
                                                                strings sent in the body

Refused (and stored nowhere): unknown or inactive oracle, a signature that is not canonical
(orchestrator.infra.signatures: low s, v 27/28 or 0/1) or does not recover to the oracle, a
timestamp in the future (beyond FEED_CLOCK_SKEW_SECONDS) or older than FEED_MAX_AGE_SECONDS,
and a feed whose typed-data hash was accepted before (the hash covers the oracle, so it is the
signer and what was signed, whatever the signature's encoding)."""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from eth_account.messages import SignableMessage
from eth_utils import is_address, to_checksum_address

from orchestrator.infra.eip712 import typed_data_signable
from orchestrator.infra.errors import DomainError
from orchestrator.infra.schema import json_whole_number
from orchestrator.infra.signatures import MalformedSignature, signature_recover
from orchestrator.infra.validation import aware_datetime_text, decimal_text
from vaults.models import OracleKey, SignedFeed
from vaults.services.typed_data import typed_data_hash

logger = logging.getLogger("vaults.feeds")

FEED_DOMAIN = {"name": "Vault Orchestrator Feed", "version": "1"}
FEED_TYPES = {
    "MarketFeed": [
        {"name": "oracle", "type": "address"},
        {"name": "timestamp", "type": "uint256"},
        {"name": "entries", "type": "FeedEntry[]"},
    ],
    "FeedEntry": [
        {"name": "protocol", "type": "string"},
        {"name": "apy", "type": "string"},
        {"name": "tvl", "type": "string"},
        {"name": "risk", "type": "uint8"},
    ],
}
MAX_ENTRIES = 100


class FeedRefused(DomainError):
    """A feed that is not accepted: `code`, the HTTP `status` and any `fields` are the API's
    error body."""

    http_status = 422

    def __init__(self, code: str, message: str, *, status: int = 422, fields: dict[str, Any] | None = None):
        super().__init__(message, code=code, http_status=status, fields=fields)


@dataclass(frozen=True)
class FeedEntry:
    protocol: str
    apy: Decimal
    tvl: Decimal
    risk: int


@dataclass(frozen=True)
class ParsedFeed:
    oracle: str
    timestamp: datetime
    entries: list[dict[str, Any]]  # as sent: apy and tvl stay strings, as signed
    signature: str

    def typed_message(self) -> dict[str, Any]:
        return {"oracle": self.oracle, "timestamp": int(self.timestamp.timestamp()), "entries": self.entries}

    def signable(self) -> SignableMessage:
        return typed_data_signable(domain=FEED_DOMAIN, types=FEED_TYPES, message=self.typed_message())

    def digest(self) -> str:
        return typed_data_hash(self.signable())


def feed_entries(entries: list[dict[str, Any]]) -> list[FeedEntry]:
    return [FeedEntry(e["protocol"], Decimal(e["apy"]), Decimal(e["tvl"]), int(e["risk"])) for e in entries]


def _decimal_string(value: Any, field: str) -> str:
    # Plain ASCII digits only: Decimal() would also take "1e9", "1_0" and other scripts' digits.
    if not decimal_text(value):
        raise ValueError(f"{field} must be a non-negative decimal string of ASCII digits, like 0.051")
    return str(value)


def _is_hex_signature(value: str) -> bool:
    return len(value) == 132 and value.startswith("0x") and all(c in string.hexdigits for c in value[2:])


def feed_parse(payload: Any) -> ParsedFeed:
    """Checks the shape of a feed body. Raises FeedRefused(code="invalid", status=400)."""
    errors: dict[str, str] = {}
    if not isinstance(payload, dict):
        raise FeedRefused("invalid", "The body must be a JSON object.", status=400)
    oracle = payload.get("oracle")
    # Any case (docs/api.md): lower() so that a mixed case that is not an EIP-55 checksum still counts.
    if not isinstance(oracle, str) or not is_address(oracle.lower()):
        errors["oracle"] = "An address is required."
    when = aware_datetime_text(payload.get("timestamp"))
    if when is None:
        errors["timestamp"] = "An RFC 3339 time with a zone is required."
    entries = payload.get("entries")
    clean: list[dict[str, Any]] = []
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        errors["entries"] = f"A list of 1 to {MAX_ENTRIES} entries is required."
    else:
        for i, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict):
                    raise ValueError("must be an object")
                protocol = entry.get("protocol")
                if not isinstance(protocol, str) or not protocol.strip() or len(protocol) > 100:
                    raise ValueError("protocol must be a name")
                risk = json_whole_number(entry.get("risk"))  # 2.0 too: JSON does not tell it from 2
                if risk is None or not 0 <= risk <= 255:
                    raise ValueError("risk must be an integer from 0 to 255")
                clean.append(
                    {
                        "protocol": protocol,
                        "apy": _decimal_string(entry.get("apy"), "apy"),
                        "tvl": _decimal_string(entry.get("tvl"), "tvl"),
                        "risk": risk,
                    }
                )
            except ValueError as exc:
                errors[f"entries[{i}]"] = str(exc)
        if len({e["protocol"] for e in clean}) != len(clean):
            errors["entries"] = "Each protocol may appear once."
    signature = payload.get("signature")
    if not isinstance(signature, str) or not _is_hex_signature(signature):
        errors["signature"] = "A 65-byte 0x-hex signature is required."
    if errors:
        raise FeedRefused("invalid", "The feed is malformed.", status=400, fields=errors)
    assert isinstance(oracle, str) and isinstance(signature, str) and when is not None
    return ParsedFeed(to_checksum_address(oracle), when, clean, signature)


def feed_signer(parsed: ParsedFeed, signable: SignableMessage | None = None) -> str:
    """The address the feed's signature recovers to ("" if it recovers to none, or is not
    canonical: orchestrator.infra.signatures); `signable` is the feed's typed data when the
    caller has encoded it already."""
    try:
        return signature_recover(signable or parsed.signable(), parsed.signature).signer
    except MalformedSignature:
        return ""


def feed_accept(*, payload: Any, now: datetime | None = None, client: Any = None) -> SignedFeed:
    """Verifies and stores a feed, then (after commit) starts Flow A for the vaults whose
    active policy trusts its oracle. Raises FeedRefused; a refused feed is stored nowhere.
    `client`, the API client that posted it, owns the runs of the vaults it may read."""
    parsed = feed_parse(payload)
    now = now or timezone.now()
    # iexact: an address registered by hand in lowercase (or mixed case) is the same oracle.
    oracle = OracleKey.objects.filter(address__iexact=parsed.oracle, active=True).first()
    if oracle is None:
        raise FeedRefused("unknown_oracle", f"{parsed.oracle} is not an allow-listed oracle.", status=403)
    try:
        # Canonical only (low s, v 27/28 or 0/1): the high-s twin of a signature is refused,
        # not taken for a second feed. The replay key below, the digest, covers the oracle too.
        signed = signature_recover(parsed.signable(), parsed.signature)
    except MalformedSignature as exc:
        raise FeedRefused("invalid_signature", str(exc), status=401) from None
    if signed.signer != parsed.oracle:
        raise FeedRefused("invalid_signature", "The signature does not recover to the oracle.", status=401)
    if parsed.timestamp > now + timedelta(seconds=settings.FEED_CLOCK_SKEW_SECONDS):
        raise FeedRefused("future_feed", f"The feed is dated in the future ({parsed.timestamp.isoformat()}).")
    if now - parsed.timestamp > timedelta(seconds=settings.FEED_MAX_AGE_SECONDS):
        raise FeedRefused("stale_feed", f"The feed is older than {settings.FEED_MAX_AGE_SECONDS} s.")
    digest = signed.digest
    from vaults.services.rebalance import rebalances_start_for_feed

    stored = False
    try:
        # No savepoint around the insert (two round trips on every feed): a replayed feed
        # rolls the whole transaction back, and nothing else was written in it yet.
        with transaction.atomic():
            feed = SignedFeed.objects.create(
                oracle=oracle,
                timestamp=parsed.timestamp,
                entries=parsed.entries,
                signature=signed.signature.hex(),
                digest=digest,
            )
            stored = True
            rebalances_start_for_feed(feed=feed, client=client)
    except IntegrityError:
        if stored:
            raise
        # The unique digest: this exact feed was accepted already.
        raise FeedRefused("feed_replayed", "This feed was accepted before.", status=409) from None
    logger.info("feed %s from %s accepted (%s entries)", feed.id, oracle.name, len(parsed.entries))
    return feed
