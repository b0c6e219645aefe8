"""Calling executors' hooks (API.md, "Execution hook"): the seed's body signature, the Standard
Webhooks headers, x-verifying-signature, a timeout per call and a cap on the answer's size.

Many calls go out at once on one event loop (DESIGN.md: "Webhook calls are made concurrently
in batches"), so a thousand due firings are not a thousand Celery tasks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings


def hmac_hex(key: str, text: str) -> str:
    """HMAC-SHA256 keyed with the UTF-8 bytes of the hex key, as the seed's
    crypto.createHmac('sha256', hmacKey) does; a lower-case hex digest."""
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def hook_url(base_url: str, hook: str) -> str:
    """{baseURL}/kernel/trigger or /kernel/executed."""
    return f"{base_url.rstrip('/')}/kernel/{hook}"


def webhook_signature(key: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">."""
    digest = hmac.new(key.encode(), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(frozen=True)
class HookCall:
    url: str
    body: dict[str, Any]
    request_id: str
    hmac_key: str
    verifying_signature: str
    correlation_id: str = ""


@dataclass(frozen=True)
class HookResult:
    """status is None when no HTTP answer came (error says why: timeout, connection, ...)."""

    status: int | None
    answer: Any = None
    error: str = ""
    elapsed_ms: int = 0

    @property
    def retryable(self) -> bool:
        """Timeouts, connection errors and 5xx are retried (API.md); anything else is final."""
        return self.status is None or self.status >= 500


class AnswerUnreadable(ValueError):
    pass


def encode_body(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def hook_headers(call: HookCall, raw: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "vault-orchestrator",
        "X-Request-ID": call.request_id,
        "webhook-id": call.request_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signature(call.hmac_key, msg_id=call.request_id, timestamp=timestamp, body=raw),
        "x-verifying-signature": call.verifying_signature,
    }
    if call.correlation_id:
        headers["X-Correlation-ID"] = call.correlation_id
    return headers


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise AnswerUnreadable(f"answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise AnswerUnreadable("answer is not JSON") from None


async def _post(client: httpx.AsyncClient, call: HookCall) -> HookResult:
    raw = encode_body(call.body)
    started = time.monotonic()
    try:
        # Redirects are not followed: a redirect could lead past the destination check (SSRF).
        async with client.stream("POST", call.url, content=raw, headers=hook_headers(call, raw)) as response:
            try:
                body = await _read_capped(response, settings.AUTOMATION_HOOK_MAX_BYTES)
                answer = _parse(body) if response.status_code < 300 else None
            except AnswerUnreadable as exc:
                return HookResult(response.status_code, error=str(exc), elapsed_ms=_ms(started))
            return HookResult(response.status_code, answer=answer, elapsed_ms=_ms(started))
    except httpx.TimeoutException:
        return HookResult(None, error=f"timed out after {settings.AUTOMATION_HOOK_TIMEOUT_SECONDS:g} s")
    except httpx.HTTPError as exc:
        return HookResult(None, error=f"{type(exc).__name__}: {exc}"[:300] or "connection error")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _post_all(calls: list[HookCall]) -> list[HookResult]:
    timeout = httpx.Timeout(settings.AUTOMATION_HOOK_TIMEOUT_SECONDS)
    limits = httpx.Limits(max_connections=settings.AUTOMATION_DELIVERY_BATCH)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False) as client:
        return list(await asyncio.gather(*(_post(client, call) for call in calls)))


def hooks_post(calls: list[HookCall]) -> list[HookResult]:
    """POSTs every call concurrently; one result per call, in order. Never raises for what an
    executor does (down, slow, garbage): that is in the result."""
    if not calls:
        return []
    return asyncio.run(_post_all(calls))
