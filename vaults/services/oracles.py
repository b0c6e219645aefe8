"""Pull mode: fetch each oracle's `pull_url` on schedule and feed what it serves through the
same verification as POST /v1/feeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from vaults.models import OracleKey
from vaults.services.feeds import FeedRefused, feed_accept

logger = logging.getLogger("vaults.oracles")

PULL_TIMEOUT = 5.0
MAX_FEED_BYTES = 256 * 1024


@dataclass(frozen=True)
class PullResult:
    accepted: int
    refused: int
    unreachable: int


def oracle_fetch(url: str) -> object:
    """GETs a feed document; raises httpx.HTTPError or ValueError (too big, not JSON)."""
    with httpx.Client(timeout=PULL_TIMEOUT, follow_redirects=False) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_FEED_BYTES:
                raise ValueError(f"feed larger than {MAX_FEED_BYTES} bytes")
    return httpx.Response(200, content=body).json()


def oracles_pull() -> PullResult:
    accepted = refused = unreachable = 0
    for oracle in OracleKey.objects.filter(active=True).exclude(pull_url=""):
        try:
            payload = oracle_fetch(oracle.pull_url)
        except (httpx.HTTPError, ValueError) as exc:
            unreachable += 1
            logger.warning("oracle %s: could not fetch %s: %s", oracle.name, oracle.pull_url, exc)
            continue
        try:
            feed_accept(payload=payload)
            accepted += 1
        except FeedRefused as exc:
            if exc.code != "feed_replayed":  # the same feed served again is normal in pull mode
                refused += 1
                logger.warning("oracle %s: feed refused (%s): %s", oracle.name, exc.code, exc)
    return PullResult(accepted, refused, unreachable)
