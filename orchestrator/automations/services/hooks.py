"""Calling executors' hooks (docs/automations.md, "Hooks"): the body's HMAC signature, the
Standard Webhooks headers, x-verifying-signature, a timeout per call and a cap on the answer's
size.

Many calls go out at once from a pool of threads over keep-alive connections (webhook calls
are made concurrently, in batches), so a thousand due firings are not a thousand Celery tasks.
urllib3 rather than an asyncio client: measured here, a threaded urllib3 pool costs ~0.7 ms of
CPU per call, httpx's async pool 4-8 ms at this concurrency.

A call connects only to the addresses its destination check passed (`destination_pin`), never
to what the name resolves to by then (DNS rebinding); the name stays the Host header, the TLS
server name and the name the certificate must match."""

from __future__ import annotations

import functools
import json
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import certifi
import urllib3
from django.conf import settings
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection

from orchestrator.automations.services.destinations import Destination
from orchestrator.automations.typed_data import webhook_signature
from orchestrator.infra.errors import DomainError
from orchestrator.infra.tracing import (
    CORRELATION_ID,
    SpanKind,
    current_context,
    span,
    span_failed,
    trace_headers,
    tracing_on,
)


def hook_url(base_url: str, hook: str) -> str:
    """{baseURL}/kernel/trigger or /kernel/executed."""
    return f"{base_url.rstrip('/')}/kernel/{hook}"


@dataclass(frozen=True)
class HookCall:
    url: str
    destination: Destination  # url's scheme, host and port, checked: the addresses to connect to
    body: dict[str, Any]
    request_id: str
    hmac_key: str
    verifying_signature: str
    correlation_id: str = ""


@dataclass(frozen=True)
class HookResult:
    """status is None when no HTTP answer came (error says why: timeout, connection, ...)."""

    status: int | None
    answer: object = None  # the parsed JSON, on a 2xx
    error: str = ""
    elapsed_ms: int = 0

    @property
    def retryable(self) -> bool:
        """Timeouts, connection errors and 5xx are retried; anything else is final."""
        return self.status is None or self.status >= 500


class AnswerUnreadable(DomainError):
    """An executor's answer that is too large or not JSON: a malformed answer."""

    code = "malformed_answer"
    http_status = 502


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
    headers.update(trace_headers())  # traceparent of the hook's span, when tracing is on
    return headers


@cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (tens of milliseconds)."""
    return ssl.create_default_context(cafile=certifi.where())


def _pinned_socket(conn: HTTPConnection, addresses: tuple[str, ...]) -> socket.socket:
    """urllib3's own connect (HTTPConnection._new_conn), to the checked addresses in turn
    instead of to a fresh resolution of conn.host."""
    failure: OSError | None = None
    for address in addresses:
        try:
            sock = connection.create_connection(
                (address, conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"connection to {conn.host} ({address}) timed out") from exc
        except OSError as exc:
            failure = exc
            continue
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock
    raise NewConnectionError(conn, f"{conn.host} at {', '.join(addresses)}: {failure}")


class _PinnedHTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, addresses: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.addresses = addresses

    def _new_conn(self) -> socket.socket:
        return _pinned_socket(self, self.addresses)


class _PinnedHTTPSConnection(HTTPSConnection):
    """TLS over the pinned socket: server_hostname (SNI) and the certificate check stay
    conn.host, the name, as urllib3 does for any connection."""

    def __init__(self, *args: Any, addresses: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.addresses = addresses

    def _new_conn(self) -> socket.socket:
        return _pinned_socket(self, self.addresses)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class _Pools:
    """Keep-alive connections per checked destination (scheme, host, port and addresses), per
    process (made after the worker forks), the least recently used closed past `size`. A name
    that resolves elsewhere gets a new pool: a kept connection always goes to an address of the
    latest check. No retries and no redirects: retries are the firing's, with backoff, and a
    redirect could lead past the destination check (SSRF)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.pools: OrderedDict[Destination, urllib3.HTTPConnectionPool] = OrderedDict()

    def get(self, destination: Destination) -> urllib3.HTTPConnectionPool:
        with self.lock:
            pool = self.pools.pop(destination, None)
            if pool is None:
                pool = self._new(destination)
            self.pools[destination] = pool
            evicted = self.pools.popitem(last=False)[1] if len(self.pools) > self.size else None
        if evicted is not None:
            evicted.close()  # idle connections now; ones in use close when given back
        return pool

    @staticmethod
    def _new(destination: Destination) -> urllib3.HTTPConnectionPool:
        common: dict[str, Any] = {
            "maxsize": settings.AUTOMATION_HOOK_CONCURRENCY,
            "retries": False,
            "addresses": destination.addresses,
        }
        if destination.scheme == "https":
            return _HTTPSPool(destination.host, destination.port, ssl_context=_tls(), **common)
        return _HTTPPool(destination.host, destination.port, **common)


@cache
def _pools() -> _Pools:
    return _Pools(256)


@cache
def _threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.AUTOMATION_HOOK_CONCURRENCY, thread_name_prefix="hook")


def _read_capped(response: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.stream(16384):
        size += len(chunk)
        if size > limit:
            raise AnswerUnreadable(f"answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> object:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise AnswerUnreadable("answer is not JSON") from None


def _post(call: HookCall) -> HookResult:
    raw = encode_body(call.body)
    started = time.monotonic()
    timeout = settings.AUTOMATION_HOOK_TIMEOUT_SECONDS
    response, drained = None, False
    parts = urlsplit(call.url)
    pinned = call.destination
    if (parts.scheme, parts.hostname, parts.port or pinned.port) != (pinned.scheme, pinned.host, pinned.port):
        return HookResult(None, error=f"{call.url} is not the destination that was checked")
    try:
        response = (
            _pools()
            .get(pinned)
            .urlopen(
                "POST",
                parts.path + (f"?{parts.query}" if parts.query else ""),
                body=raw,
                headers=hook_headers(call, raw),
                preload_content=False,
                redirect=False,
                timeout=urllib3.Timeout(total=timeout),
            )
        )
        body = _read_capped(response, settings.AUTOMATION_HOOK_MAX_BYTES)
        drained = True
        answer = _parse(body) if response.status < 300 else None
        return HookResult(response.status, answer=answer, elapsed_ms=_ms(started))
    except AnswerUnreadable as exc:
        assert response is not None  # raised while reading the answer
        return HookResult(response.status, error=str(exc), elapsed_ms=_ms(started))
    except urllib3.exceptions.NewConnectionError as exc:  # before TimeoutError: it subclasses it
        return HookResult(None, error=f"cannot connect: {exc}"[:300])
    except (TimeoutError, urllib3.exceptions.TimeoutError):
        return HookResult(None, error=f"timed out after {timeout:g} s")
    except urllib3.exceptions.HTTPError as exc:
        return HookResult(None, error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if response is not None and drained:
            response.release_conn()
        elif response is not None:  # an answer not read to the end: its connection is not reusable
            response.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def hooks_post(calls: list[HookCall]) -> list[HookResult]:
    """POSTs every call concurrently; one result per call, in order. Never raises for what an
    executor does (down, slow, garbage): that is in the result."""
    if not calls:
        return []
    post = _post
    if tracing_on():
        # The pool's threads do not inherit the caller's context: each call's span is given it.
        parent = current_context()
        post = functools.partial(_post_traced, parent=parent)
    if len(calls) == 1:
        return [post(calls[0])]
    return list(_threads().map(post, calls))


def _post_traced(call: HookCall, *, parent: Any) -> HookResult:
    parts = urlsplit(call.url)
    attributes = {
        "http.request.method": "POST",
        "url.path": parts.path,
        "server.address": parts.hostname or "",
        "orchestrator.hook.request_id": call.request_id,
    }
    if call.correlation_id:
        attributes[CORRELATION_ID] = call.correlation_id
    name = f"hook/{parts.path.rstrip('/').rsplit('/', 1)[-1]}"
    with span(name, attributes=attributes, kind=SpanKind.CLIENT, parent=parent) as current:
        result = _post(call)
        current.set_attribute("orchestrator.hook.elapsed_ms", result.elapsed_ms)
        if result.status is not None:
            current.set_attribute("http.response.status_code", result.status)
        if result.error or result.status is None or result.status >= 400:
            span_failed(current, error_type=result.error[:100] or str(result.status), description=result.error[:200])
        return result
