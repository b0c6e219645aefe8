"""The soak's HTTP clients and their tally: every call counted by status, 5xx kept with the
path and the start of the body, transport errors by kind, latencies by group."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx

# gunicorn closes a keep-alive connection after 2 s idle; a client that reuses one at that
# moment gets a reset that says nothing about the server. The soak's clients drop them first.
KEEPALIVE_SECONDS = 1.0


class Http:
    """Every call the soak makes, counted: status codes, 5xx with the path and the start of the
    body, transport errors (refused, reset, timeouts), latencies by group."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []
        self.transport_errors: Counter[str] = Counter()
        self.probe_failures: list[str] = []  # /readyz answering 503: reported, not a 5xx
        self.latencies: dict[str, list[float]] = {}

    def client(self, token: str | None = None, *, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Token {token}"} if token else {}
        return httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
            trust_env=False,  # a proxy in the environment must never see loopback traffic
        )

    def call(
        self, client: httpx.Client, method: str, path: str, *, group: str = "steady", **kwargs: Any
    ) -> httpx.Response | None:
        began = time.perf_counter()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            with self.lock:
                self.transport_errors[f"{type(exc).__name__} {method} {_route(path)}"] += 1
            return None
        elapsed = (time.perf_counter() - began) * 1000
        with self.lock:
            self.statuses[response.status_code] += 1
            self.latencies.setdefault(group, []).append(elapsed)
            if response.status_code >= 500:
                note = f"{time.strftime('%H:%M:%S')} {response.status_code} {method} {path}: {response.text[:200]!r}"
                if path == "/readyz":
                    self.probe_failures.append(note)
                    self.statuses[response.status_code] -= 1
                else:
                    self.server_errors.append(note)
        return response

    def retried(
        self, client: httpx.Client, method: str, path: str, *, until: float, group: str = "user", **kwargs: Any
    ) -> httpx.Response | None:
        """A user's call that must land: tried again on transport errors and 5xx (the web
        process may be restarting) until `until` (time.monotonic())."""
        delay = 0.5
        while True:
            response = self.call(client, method, path, group=group, **kwargs)
            if (response is not None and response.status_code < 500) or time.monotonic() > until:
                return response
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport_errors.values())

    def fetch(
        self,
        client: httpx.Client,
        path: str,
        *,
        method: str = "GET",
        until: float | None = None,
        check: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """A user's call whose JSON answer is needed; {} (or RuntimeError with `check`) if none."""
        response = self.retried(client, method, path, until=until or time.monotonic() + 60, group="user", **kwargs)
        if response is None or response.status_code >= 400:
            if check:
                detail = "no answer" if response is None else f"{response.status_code} {response.text[:300]}"
                raise RuntimeError(f"{method} {path}: {detail}")
            return {}
        return dict(response.json())


def _route(path: str) -> str:
    return "/".join("{id}" if len(part) > 20 or part.startswith("PROP-") else part for part in path.split("/"))
