"""The engine's, the relayer's, the workers' and the broker's metrics, computed when Prometheus
scrapes /metrics (served by orchestrator/infra/metrics.py), from the database and the broker.

Nothing is counted in a process's memory: workers write what they do to PostgreSQL (runs, relay
transactions, heartbeats), so one scrape of any web process sees every worker on every machine,
and a restarted process loses nothing. The counters are counts of rows that never leave the
state counted (runs in a final phase, confirmed transactions), so they only go up.

Names follow the engine's operational metrics (workflow completed ->
`orchestrator_workflow_completed_total`, workflow stalled -> `orchestrator_workflow_stalled`);
docs/operations.md lists them all. Registered when the operations app is ready."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from orchestrator.engine.models import FINAL_PHASES, WorkflowRun
from orchestrator.engine.selectors import runs_stalled
from orchestrator.infra.heartbeats import WORKER_PREFIX
from orchestrator.infra.metrics import collector
from orchestrator.infra.models import Heartbeat

logger = logging.getLogger("orchestrator.operations.metrics")

# Seconds from a relay request to its confirmation: a block or two on a dev chain, minutes when
# fees are bumped, an hour at the outside.
CONFIRMATION_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


@collector
def workflow_runs() -> Iterator[Metric]:
    runs = GaugeMetricFamily("orchestrator_workflow_runs", "Workflow runs by kind and phase.", labels=["kind", "phase"])
    for row in WorkflowRun.objects.values("kind", "phase").annotate(n=Count("id")):
        runs.add_metric([row["kind"], row["phase"]], row["n"])
    yield runs
    completed = CounterMetricFamily(
        "orchestrator_workflow_completed",
        "Workflow runs that reached a final phase (completed, failed, blocked), by kind and outcome.",
        labels=["kind", "outcome"],
    )
    final = WorkflowRun.objects.filter(phase__in=FINAL_PHASES)
    for row in final.values("kind", "phase").annotate(n=Count("id")):
        completed.add_metric([row["kind"], row["phase"]], row["n"])
    yield completed
    stalled = GaugeMetricFamily(
        "orchestrator_workflow_stalled",
        "Runs pending beyond WORKFLOW_STALL_PENDING_SECONDS and unchanged beyond WORKFLOW_STALL_NO_MUTATION_SECONDS.",
    )
    stalled.add_metric([], runs_stalled().count())
    yield stalled


@collector
def relay_transactions() -> Iterator[Metric]:
    from relayer.models import RelayTransaction

    relays = GaugeMetricFamily("relayer_transactions", "Relay transactions by phase.", labels=["phase"])
    for phase, n in RelayTransaction.objects.values_list("phase").annotate(n=Count("id")):
        relays.add_metric([phase], n)
    yield relays
    wait = ExpressionWrapper(F("confirmed_at") - F("created_at"), output_field=DurationField())
    confirmed = RelayTransaction.objects.filter(confirmed_at__isnull=False).annotate(wait=wait)
    buckets = {
        f"le_{i}": Count("id", filter=Q(wait__lte=timedelta(seconds=s))) for i, s in enumerate(CONFIRMATION_BUCKETS)
    }
    row = confirmed.aggregate(count=Count("id"), total=Sum("wait"), **buckets)
    total: timedelta | None = row["total"]
    yield HistogramMetricFamily(
        "relayer_confirmation_seconds",
        "Seconds from a relay request to its confirmation at the chain's depth.",
        buckets=[
            *((str(float(s)), row[f"le_{i}"]) for i, s in enumerate(CONFIRMATION_BUCKETS)),
            ("+Inf", row["count"]),
        ],
        sum_value=total.total_seconds() if total is not None else 0.0,
    )


@collector
def heartbeats() -> Iterator[Metric]:
    now = timezone.now()
    ages = GaugeMetricFamily(
        "orchestrator_heartbeat_age_seconds",
        'Seconds since a process last proved it was alive: "beat", and "worker:<hostname>" per worker.',
        labels=["name"],
    )
    alive = 0
    for beat in Heartbeat.objects.all():
        age = (now - beat.at).total_seconds()
        ages.add_metric([beat.name], age)
        if beat.name.startswith(WORKER_PREFIX) and age < 3 * settings.WORKER_HEARTBEAT_SECONDS:
            alive += 1
    yield ages
    workers = GaugeMetricFamily(
        "orchestrator_workers_alive", "Celery workers whose heartbeat is younger than 3 heartbeat periods."
    )
    workers.add_metric([], alive)
    yield workers


@collector
def queues() -> Iterator[Metric]:
    from orchestrator.infra.broker import queue_depths

    up = GaugeMetricFamily("celery_broker_up", "1 if the broker answered this scrape, else 0.")
    depth = GaugeMetricFamily("celery_queue_depth", "Messages waiting per queue.", labels=["queue"])
    try:
        depths = queue_depths()
    except Exception as exc:  # an outage is itself the metric; /readyz says more
        logger.warning("metrics: broker unreachable: %s", exc)
        depths = {}
    up.add_metric([], 1 if depths else 0)
    for name, count in depths.items():
        depth.add_metric([name], count)
    yield up
    yield depth
