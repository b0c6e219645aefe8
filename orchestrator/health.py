"""Liveness, readiness and metrics for operators and load balancers.

/healthz answers as soon as the process is up. /readyz checks what a request or a run needs:
the database, the broker, every enabled chain's RPC, and a recent beat heartbeat; it says which
failed. /metrics is Prometheus text; its gauges are read from the database at scrape time, so
one scrape sees the state every worker wrote, whatever process serves it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from orchestrator.models import ACTIVE_PHASES, Heartbeat, WorkflowRun

BEAT = "beat"


def heartbeat(name: str) -> None:
    Heartbeat.objects.update_or_create(name=name, defaults={"at": timezone.now()})


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _broker() -> str:
    from orchestrator.celery import app

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


class DatabaseCollector:
    """Gauges computed from the system of record when Prometheus scrapes."""

    def collect(self) -> Iterator[Any]:
        runs = GaugeMetricFamily(
            "orchestrator_workflow_runs", "Workflow runs by kind and phase.", labels=["kind", "phase"]
        )
        for row in WorkflowRun.objects.values("kind", "phase").annotate(n=Count("id")):
            runs.add_metric([row["kind"], row["phase"]], row["n"])
        yield runs
        stall = timezone.now() - timedelta(seconds=settings.WORKFLOW_STALL_SECONDS)
        stalled = GaugeMetricFamily("orchestrator_workflow_stalled", "Runs due longer than the stall threshold.")
        stalled.add_metric([], WorkflowRun.objects.filter(phase__in=ACTIVE_PHASES, due_at__lt=stall).count())
        yield stalled
        from relayer.models import RelayTransaction

        relays = GaugeMetricFamily("relayer_transactions", "Relay transactions by phase.", labels=["phase"])
        for phase, n in RelayTransaction.objects.values_list("phase").annotate(n=Count("id")):
            relays.add_metric([phase], n)
        yield relays
        beats = GaugeMetricFamily("orchestrator_heartbeat_age_seconds", "Seconds since a heartbeat.", labels=["name"])
        for beat in Heartbeat.objects.all():
            beats.add_metric([beat.name], (timezone.now() - beat.at).total_seconds())
        yield beats
        from orchestrator.broker import QUEUES, queue_depth

        depth = GaugeMetricFamily("celery_queue_depth", "Messages waiting per queue.", labels=["queue"])
        for name in QUEUES:
            with suppress(Exception):  # a broker outage shows in /readyz; the rest still count
                depth.add_metric([name], queue_depth(name))
        yield depth


def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
