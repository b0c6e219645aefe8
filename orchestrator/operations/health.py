"""Liveness, readiness and metrics for operators and load balancers.

/healthz (orchestrator/urls.py) answers as soon as the process is up. /readyz checks what a
request or a run needs: the database, the broker, every enabled chain's RPC, and a recent beat
heartbeat; it says which failed. /metrics is served by orchestrator/infra/metrics.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from orchestrator.infra.heartbeats import BEAT
from orchestrator.infra.models import Heartbeat


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _broker() -> str:
    from orchestrator.celery import app  # the project's Celery app, which imports infra only

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return "ok"


def _beat() -> str:
    beat = Heartbeat.objects.filter(name=BEAT).first()
    limit = timedelta(seconds=settings.BEAT_HEARTBEAT_MAX_AGE_SECONDS)
    if beat is None:
        raise RuntimeError("no beat heartbeat yet")
    age = timezone.now() - beat.at
    if age > limit:
        raise RuntimeError(f"last beat heartbeat {int(age.total_seconds())} s ago")
    return f"{int(age.total_seconds())} s ago"


def _chains() -> dict[str, Callable[[], str]]:
    from relayer.models import Chain
    from relayer.rpc import web3_for

    checks: dict[str, Callable[[], str]] = {}
    for chain in Chain.objects.filter(enabled=True):

        def check(url: str = chain.rpc_url) -> str:
            return f"head {web3_for(url).eth.block_number}"

        checks[f"chain:{chain.chain_id}"] = check
    return checks


def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, Callable[[], str]] = {"database": _database, "broker": _broker, "beat": _beat}
    results: dict[str, dict[str, str]] = {}
    try:
        checks.update(_chains())
    except Exception as exc:  # the chain list itself needs the database
        results["chains"] = {"status": "fail", "detail": exc.__class__.__name__}
    for name, check in checks.items():
        try:
            results[name] = {"status": "ok", "detail": check()}
        except Exception as exc:  # every failure is reported, none is raised
            results[name] = {"status": "fail", "detail": f"{exc.__class__.__name__}: {exc}"[:200]}
    ready = all(r["status"] == "ok" for r in results.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": results}, status=200 if ready else 503)
