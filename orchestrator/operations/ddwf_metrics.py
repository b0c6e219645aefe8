"""The engine's OpenTelemetry metrics, meter `dalp.ddwf`, each read from PostgreSQL when observed.

Declared with orchestrator.infra.telemetry_metrics.observable: served on /metrics beside the
orchestrator_* metrics, and exported over OTLP/HTTP by beat when the OTEL_* variables ask for
it (docs/operations.md, "Metrics: dalp.ddwf"). No value lives in a process's memory; what only
a worker knows it wrote to the database when it started (orchestrator/infra/heartbeats.py).

Each instrument (type, unit, attributes; what it means here; its Prometheus name):

- dalp.ddwf.endpoint.registrations: observable counter, {registration}, `outcome` ok | failed.
  A worker registering once fully started (Celery's worker_ready): its heartbeat row and the
  counter written (ok), or refused by the database (failed, retried with each heartbeat).
  `dalp_ddwf_endpoint_registrations_total`.
- dalp.ddwf.services.bound: observable up-down counter, {service}, `worker`. Per live worker,
  the workflow kinds of the engine's registry whose queue it consumes.
  `dalp_ddwf_services_bound`.
- dalp.ddwf.startup.duration_ms: observable gauge, ms, `worker`. Per live worker, milliseconds
  from telemetry set up (orchestrator.celery imported) to worker_ready.
  `dalp_ddwf_startup_duration_ms_milliseconds` (the exporter appends the unit).
- dalp.ddwf.workflow.completed: observable counter, {run}, `workflow.type` (the run's kind) and
  `outcome` success | failed | blocked. Runs that reached a final phase (completed, failed,
  blocked). `dalp_ddwf_workflow_completed_total{workflow_type,outcome}`.
- dalp.ddwf.workflow.stalled: observable gauge, {run}, `workflow.type`. Runs the engine's stall
  rule (engine.selectors.runs_stalled) classifies as stalled at observation time; 0 for each
  registered kind with none. `dalp_ddwf_workflow_stalled{workflow_type}`.
- dalp.ddwf.exchange_rate.schedulers.active: observable up-down counter, {scheduler}, no
  attributes. Oracle feeds refreshed on a schedule: active oracles with a pull_url, while
  beat's "oracle pull" periodic task (every ORACLE_PULL_SECONDS) is enabled, else 0.
  `dalp_ddwf_exchange_rate_schedulers_active`.

A worker is live while its heartbeat is younger than three heartbeat periods (as
orchestrator_workers_alive counts them); the rows of stopped workers are not reported."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, QuerySet
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from opentelemetry.metrics import Observation

from orchestrator.engine.definition import registry
from orchestrator.engine.models import FINAL_PHASES, Phase, WorkflowRun
from orchestrator.engine.selectors import runs_stalled
from orchestrator.infra.heartbeats import WORKER_PREFIX
from orchestrator.infra.models import EndpointRegistration, Heartbeat
from orchestrator.infra.telemetry_metrics import observable, services_bound_source
from orchestrator.operations.schedules import fixed_schedule
from vaults.models import OracleKey

# A final phase -> the outcome of the handler's last attempt: success, or one of the two
# terminal errors (a fault, or a refusal decided by a step such as a policy saying no).
OUTCOMES = {Phase.COMPLETED: "success", Phase.FAILED: "failed", Phase.BLOCKED: "blocked"}
ORACLE_PULL_TASK = "oracle pull"


def workflow_services(queues: Collection[str]) -> int:
    """The workflow kinds a worker consuming `queues` serves: their steps run on those queues."""
    return sum(1 for kind in registry.kinds() if registry.get(kind).queue in queues)


services_bound_source(workflow_services)


def _live_workers() -> QuerySet[Heartbeat]:
    alive_since = timezone.now() - timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS)
    return Heartbeat.objects.filter(name__startswith=WORKER_PREFIX, at__gte=alive_since, started_at__isnull=False)


@observable(
    name="dalp.ddwf.endpoint.registrations",
    kind="counter",
    unit="{registration}",
    description="Worker registrations at start by outcome (ok: heartbeat row and counter written; failed: refused).",
)
def endpoint_registrations() -> Iterator[Observation]:
    counted = dict(EndpointRegistration.objects.values_list("outcome", "attempts"))
    for outcome in EndpointRegistration.Outcome.values:
        yield Observation(counted.get(outcome, 0), {"outcome": outcome})


@observable(
    name="dalp.ddwf.services.bound",
    kind="up_down_counter",
    unit="{service}",
    description="Workflow kinds each live worker serves on the queues it consumes.",
)
def services_bound() -> Iterator[Observation]:
    for beat in _live_workers():
        yield Observation(beat.services_bound or 0, {"worker": beat.name.removeprefix(WORKER_PREFIX)})


@observable(
    name="dalp.ddwf.startup.duration_ms",
    kind="gauge",
    unit="ms",
    description="Per live worker, milliseconds from telemetry set up to the worker fully started.",
)
def startup_duration() -> Iterator[Observation]:
    for beat in _live_workers():
        yield Observation(beat.startup_ms or 0, {"worker": beat.name.removeprefix(WORKER_PREFIX)})


@observable(
    name="dalp.ddwf.workflow.completed",
    kind="counter",
    unit="{run}",
    description="Workflow runs that reached a final phase, by kind and outcome (success, failed, blocked).",
)
def workflow_completed() -> Iterator[Observation]:
    final = WorkflowRun.objects.filter(phase__in=FINAL_PHASES).values("kind", "phase").annotate(n=Count("id"))
    for row in final.order_by():
        yield Observation(row["n"], {"workflow.type": row["kind"], "outcome": OUTCOMES[Phase(row["phase"])]})


@observable(
    name="dalp.ddwf.workflow.stalled",
    kind="gauge",
    unit="{run}",
    description="Workflow runs the engine's stall rule classifies as stalled now, by kind.",
)
def workflow_stalled() -> Iterator[Observation]:
    # By id, so that whatever runs_stalled annotates or orders by stays out of this GROUP BY.
    stalled = WorkflowRun.objects.filter(pk__in=runs_stalled().values("pk"))
    counts = dict(stalled.values_list("kind").annotate(n=Count("id")).order_by())
    for kind in sorted({*registry.kinds(), *counts}):
        yield Observation(counts.get(kind, 0), {"workflow.type": kind})


@observable(
    name="dalp.ddwf.exchange_rate.schedulers.active",
    kind="up_down_counter",
    unit="{scheduler}",
    description="Oracle feeds pulled on a schedule: active oracles with a pull URL, while beat's oracle pull runs.",
)
def exchange_rate_schedulers() -> Iterator[Observation]:
    task = fixed_schedule()[ORACLE_PULL_TASK][0]
    scheduled = PeriodicTask.objects.filter(name=ORACLE_PULL_TASK, task=task, enabled=True).exists()
    pulled = OracleKey.objects.filter(active=True).exclude(pull_url="").count() if scheduled else 0
    yield Observation(pulled, {})
