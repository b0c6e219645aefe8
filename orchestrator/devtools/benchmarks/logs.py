"""`bench logs`: GET /v1/{sub_id}/logs over real HTTP on a large log.

One subscription with 1,000,000 firings and 100 others with 10,000 each (logs_fill.py). gunicorn
as production runs it (processes.web_server: 2 gthread workers, 8 threads each) answers one
client with a token, paced at a steady rate (20 requests/s by default, so the server is never
queueing and a request's time is its own): the cases in turn, request by request, so that the
machine's other work meets them alike, warm-up rounds first, then `--requests` timed ones per
case, from the time the request is sent to the time the whole answer is read. The cases:
/healthz (no view, no database: the floor of every request here), the first page,
offset=10000, and a deep offset (500,000 by default), each with the default limit of 10, and the
first page with limit=100. Each case's page is checked once against the
plain `ORDER BY created_at DESC, id DESC OFFSET .. LIMIT ..` it must equal.

Then where a request's time goes, in this process (medians): the token lookup, the view's one
statement (the subscription and its page), the two statements it replaced, the entries, the
JSON, and the whole request through Django's test client (middleware included, no socket). Then
EXPLAIN (ANALYZE, BUFFERS) of the view's statement for the first page and offset=10000; with
--explain also at the deep offset, and of the plain OFFSET query the keyset read replaced."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.db import connection
from django.test import Client
from rest_framework.renderers import JSONRenderer

from orchestrator.automations.models import Subscription
from orchestrator.automations.selectors import (
    OWNED_LOG_PAGE_SQL,
    owned_subscription_logs,
    subscription_logs,
)
from orchestrator.automations.wire import log_entry_json
from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import common, logs_fill
from orchestrator.infra.tokens import HashedTokenAuthentication

WARMUP = 20
PLAIN_SQL = """
SELECT * FROM automations_firing WHERE subscription_id = %(sub)s
ORDER BY created_at DESC, id DESC OFFSET %(offset)s LIMIT %(limit)s
"""


@dataclass
class Case:
    name: str
    offset: int | None  # None: /healthz, the floor of any request (gunicorn, middleware, client)
    limit: int | None
    latencies: list[float]

    def row(self) -> dict[str, Any]:
        return {
            "case": self.name,
            "offset": "-" if self.offset is None else self.offset,
            "limit": "-" if self.limit is None else self.limit,
            "requests": len(self.latencies),
            "p50 ms": common.percentile(self.latencies, 50),
            "p90 ms": common.percentile(self.latencies, 90),
            "p99 ms": common.percentile(self.latencies, 99),
            "max ms": max(self.latencies),
        }


def _plain_ids(sub: Subscription, offset: int, limit: int) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(PLAIN_SQL, {"sub": sub.pk, "offset": offset, "limit": limit})
        return [str(row[0]) for row in cursor.fetchall()]


def _timed(client: httpx.Client, paths: list[str], *, rounds: int, rate: float) -> list[list[float]]:
    """`rounds` rounds of GETs of `paths` in turn, one request every 1/rate s (a late one is sent
    at once, not skipped): the latencies of each path. In turn, so that whatever else the
    machine does meets every case alike."""
    latencies: list[list[float]] = [[] for _ in paths]
    start = time.perf_counter()
    for i in range(rounds * len(paths)):
        pause = start + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        path = paths[i % len(paths)]
        began = time.perf_counter()
        response = client.get(path)
        response.read()
        latencies[i % len(paths)].append((time.perf_counter() - began) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return latencies


def _http_cases(
    base_url: str, fill: logs_fill.Fill, cases: list[tuple[str, int, int]], *, requests: int, rate: float
) -> list[Case]:
    sub = fill.big
    paths = ["/healthz"]
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Token {fill.token}"}, timeout=30, trust_env=False
    ) as client:
        for name, offset, limit in cases:
            path = f"/v1/{sub.pk}/logs?offset={offset}&limit={limit}"
            answer = client.get(path).json()["data"]
            expected = _plain_ids(sub, offset, limit)
            if [e["id"] for e in answer] != expected:
                raise RuntimeError(f"{name}: the page differs from ORDER BY .. OFFSET {offset} LIMIT {limit}")
            paths.append(path)
        _timed(client, paths, rounds=WARMUP, rate=rate)
        latencies = _timed(client, paths, rounds=requests, rate=rate)
    floor = Case("/healthz (floor)", None, None, latencies[0])
    return [floor] + [
        Case(name, offset, limit, ms) for (name, offset, limit), ms in zip(cases, latencies[1:], strict=True)
    ]


def _median_ms(fn: Callable[[], Any], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return common.median(times)


def _breakdown(fill: logs_fill.Fill, offset: int, rounds: int) -> list[dict[str, Any]]:
    """Where one request's time goes, each part timed alone in this process."""
    sub = fill.big
    auth = HashedTokenAuthentication()
    page = subscription_logs(subscription=sub, offset=offset, limit=10)
    entries = [log_entry_json(f) for f in page]
    client = Client(headers={"Authorization": f"Token {fill.token}"})
    path = f"/v1/{sub.pk}/logs?offset={offset}&limit=10"
    owner = sub.owner
    parts = {
        "token lookup": lambda: auth.authenticate_credentials(fill.token),
        "subscription + page, one statement (the view's)": lambda: owned_subscription_logs(
            sub_id=sub.pk, owner_id=owner.pk, offset=offset, limit=10
        ),
        "  as two: subscription lookup": lambda: (
            Subscription.objects.only("id", "chain_id", "sub_account_address").filter(pk=sub.pk, owner=owner).first()
        ),
        "  as two: page query": lambda: subscription_logs(subscription=sub, offset=offset, limit=10),
        "entries (log_entry_json)": lambda: [log_entry_json(f) for f in page],
        "JSON render": lambda: JSONRenderer().render({"data": entries}),
        "whole request, test client": lambda: client.get(path),
    }
    return [{"offset": offset, "part": name, "median ms": _median_ms(fn, rounds)} for name, fn in parts.items()]


def explain(sub: Subscription, offset: int, *, plain: bool, limit: int = 10) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the view's statement at `offset` (run twice, the second
    shown: the first in a session pays for loading the catalog) and, with `plain`, of the plain
    OFFSET query it replaced."""
    queries = [("the view's statement (subscription + keyset page)", OWNED_LOG_PAGE_SQL)]
    if plain:
        queries.append(("plain OFFSET, for comparison", PLAIN_SQL))
    params: dict[str, Any] = {"sub": sub.pk, "owner": sub.owner_id, "offset": offset, "limit": limit}
    lines = []
    with connection.cursor() as cursor:
        for label, sql in queries:
            for _ in range(2):
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
                plan = [row[0] for row in cursor.fetchall()]
            lines.append(f"-- {label}, offset={offset} limit={limit}")
            lines.extend(plan)
    return lines


def run(
    *,
    big: int,
    others: int,
    per_other: int,
    requests: int,
    rate: float,
    deep: int,
    keep: bool,
    explain_plans: bool,
    out: Callable[[str], Any],
) -> None:
    common.require_real_services()
    settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS = settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True
    out(f"fill: 1 subscription with {big} firings, {others} with {per_other} each")
    fill = logs_fill.fill(big=big, others=others, per_other=per_other, out=out)
    out(f"  {logs_fill.table_size()}")
    cases = [("first page", 0, 10), ("offset 10000", min(10_000, big), 10), ("deep offset", deep, 10)]
    cases.append(("first page, limit 100", 0, 100))
    port = common.free_port()
    log = Path(settings.VAR_DIR) / "log" / f"bench-logs-{uuid.uuid4().hex[:6]}.log"
    web = processes.web_server(port=port, log_path=log)
    out(
        f"web: gunicorn on port {port} (2 gthread workers x 8 threads); "
        f"{rate:g} requests/s, the cases in turn, {requests} per case"
    )
    web.start().wait_ready(timeout=60)
    try:
        results = _http_cases(f"http://127.0.0.1:{port}", fill, cases, requests=requests, rate=rate)
    finally:
        web.stop()
    out("where the time goes (in this process, medians of 200):")
    parts = [row for offset in (0, 10_000, deep) for row in _breakdown(fill, offset, 200)]
    # The first page's and offset 10,000's plans always (the goal is about them); the deep
    # offset's and the plain OFFSET ones (9 s at 500,000) with --explain.
    shown = cases[:3] if explain_plans else cases[:2]
    plans = [line for _, offset, _ in shown for line in explain(fill.big, offset, plain=explain_plans)]
    if not keep:
        logs_fill.clean()
    out("")
    common.table([c.row() for c in results], out)
    out("")
    common.table(parts, out)
    for line in plans:
        out(line)
    floor, first, tenk, deepest, hundred = (c.row() for c in results)
    out(
        common.result_line(
            "logs",
            {
                "p99_ms": max(first["p99 ms"], tenk["p99 ms"]),
                "first_page_p99_ms": first["p99 ms"],
                "offset_10000_p99_ms": tenk["p99 ms"],
                "first_page_p50_ms": first["p50 ms"],
                "offset_10000_p50_ms": tenk["p50 ms"],
                "deep_offset": deep,
                "deep_offset_p50_ms": deepest["p50 ms"],
                "deep_offset_p99_ms": deepest["p99 ms"],
                "limit_100_p99_ms": hundred["p99 ms"],
                "healthz_p50_ms": floor["p50 ms"],
                "healthz_p99_ms": floor["p99 ms"],
                "firings": big + others * per_other,
                "requests_per_case": requests,
                "rate": rate,
            },
        )
    )
