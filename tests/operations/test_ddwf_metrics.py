"""The dalp.ddwf OpenTelemetry metrics: on /metrics from the database, and over OTLP/HTTP to a
real receiver (this module's), from a MeterProvider set up in this process and from beat."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.celery import QUEUES, app
from orchestrator.engine.definition import registry
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.infra import heartbeats, telemetry_metrics
from orchestrator.infra.heartbeats import registrations_count, worker_registered
from orchestrator.infra.metrics import COLLECTORS
from orchestrator.infra.models import EndpointRegistration, Heartbeat
from orchestrator.operations.ddwf_metrics import workflow_services
from orchestrator.operations.schedules import ensure_periodic_tasks
from tests.conftest import Workers, free_port, wait_until
from tests.factories import HeartbeatFactory, OracleKeyFactory, WorkflowRunFactory
from tests.support.automations import beat_start

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

INSTRUMENTS = {
    "dalp.ddwf.endpoint.registrations",
    "dalp.ddwf.services.bound",
    "dalp.ddwf.startup.duration_ms",
    "dalp.ddwf.workflow.completed",
    "dalp.ddwf.workflow.stalled",
    "dalp.ddwf.exchange_rate.schedulers.active",
}


def scrape() -> Samples:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def ddwf(samples: Samples) -> Samples:
    return {key: value for key, value in samples.items() if key[0].startswith("dalp_ddwf_")}


def ago(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds)


def runs(kind: str, phase: Phase, n: int) -> None:
    for _ in range(n):
        WorkflowRunFactory.create(kind=kind, phase=phase)


def stalled_run(kind: str) -> WorkflowRun:
    """Due an hour ago, created two hours ago, nobody on it: stalled under any threshold here."""
    run = WorkflowRunFactory.create(kind=kind, due_at=ago(3600))
    WorkflowRun.objects.filter(pk=run.pk).update(created_at=ago(7200), updated_at=ago(7200))
    return run


@pytest.mark.django_db
def test_metrics_serves_each_dalp_ddwf_series_from_the_database() -> None:
    runs("engine.noop", Phase.COMPLETED, 2)
    runs("engine.noop", Phase.FAILED, 1)
    runs("test.effects", Phase.BLOCKED, 1)
    runs("test.effects", Phase.SUBMITTING, 3)  # not final: not counted
    stalled_run("engine.noop")
    live = HeartbeatFactory.create(name="worker:w1@host", started_at=ago(5), startup_ms=1234, services_bound=4)
    HeartbeatFactory.create(
        name="worker:gone@host", at=ago(3600), started_at=ago(4000), startup_ms=99, services_bound=4
    )
    HeartbeatFactory.create(name="beat")
    registrations_count(outcome="ok", attempts=2, at=timezone.now())
    registrations_count(outcome="failed", attempts=1, at=timezone.now())
    ensure_periodic_tasks()
    OracleKeyFactory.create(pull_url="http://127.0.0.1:9/feed")
    OracleKeyFactory.create(pull_url="http://127.0.0.1:9/other")
    OracleKeyFactory.create(pull_url="")  # push only
    OracleKeyFactory.create(pull_url="http://127.0.0.1:9/off", active=False)

    samples = scrape()
    got = ddwf(samples)

    completed = {k: v for k, v in got.items() if k[0] == "dalp_ddwf_workflow_completed_total"}
    assert completed == {
        ("dalp_ddwf_workflow_completed_total", (("outcome", "success"), ("workflow_type", "engine.noop"))): 2,
        ("dalp_ddwf_workflow_completed_total", (("outcome", "failed"), ("workflow_type", "engine.noop"))): 1,
        ("dalp_ddwf_workflow_completed_total", (("outcome", "blocked"), ("workflow_type", "test.effects"))): 1,
    }
    assert got[("dalp_ddwf_endpoint_registrations_total", (("outcome", "ok"),))] == 2
    assert got[("dalp_ddwf_endpoint_registrations_total", (("outcome", "failed"),))] == 1
    worker = live.name.removeprefix("worker:")
    assert {k: v for k, v in got.items() if k[0] == "dalp_ddwf_services_bound"} == {
        ("dalp_ddwf_services_bound", (("worker", worker),)): 4
    }
    assert {k: v for k, v in got.items() if k[0] == "dalp_ddwf_startup_duration_ms_milliseconds"} == {
        ("dalp_ddwf_startup_duration_ms_milliseconds", (("worker", worker),)): 1234
    }
    stalled = {k[1][0][1]: v for k, v in got.items() if k[0] == "dalp_ddwf_workflow_stalled"}
    assert stalled["engine.noop"] == 1
    assert set(stalled) == set(registry.kinds()) and sum(stalled.values()) == 1
    assert got[("dalp_ddwf_exchange_rate_schedulers_active", ())] == 2
    assert not any(k[0] == "orchestrator_metrics_collector_errors" and v for k, v in samples.items())

    # Beat's pull is what makes a feed a scheduler: disabled, there are none.
    PeriodicTask.objects.filter(name="oracle pull").update(enabled=False)
    assert scrape()[("dalp_ddwf_exchange_rate_schedulers_active", ())] == 0


@pytest.mark.django_db(transaction=True)  # registering closes this process's database pool, as a worker does
def test_a_worker_registering_writes_its_row_and_counts_once() -> None:
    consumer = SimpleNamespace(app=app, hostname="w2@host")  # what Celery's worker_ready sends
    before = time.monotonic()
    worker_registered(consumer)
    row = Heartbeat.objects.get(name="worker:w2@host")
    assert row.started_at is not None and row.startup_ms is not None
    assert row.startup_ms >= 0 and row.startup_ms <= telemetry_metrics.ms_since_init() + 1
    assert time.monotonic() >= before
    # This process consumes every queue: every kind is served.
    assert row.services_bound == workflow_services(QUEUES) == len(registry.kinds())
    assert dict(EndpointRegistration.objects.values_list("outcome", "attempts")) == {"ok": 1}
    got = ddwf(scrape())
    assert got[("dalp_ddwf_services_bound", (("worker", "w2@host"),))] == len(registry.kinds())
    assert got[("dalp_ddwf_endpoint_registrations_total", (("outcome", "ok"),))] == 1


@pytest.mark.django_db(transaction=True)
def test_a_refused_registration_is_retried_by_the_next_heartbeat_and_counted_as_failed() -> None:
    # A hostname longer than the column: PostgreSQL refuses the row, as it would when down.
    worker_registered(SimpleNamespace(app=app, hostname="h" * 300))
    assert not EndpointRegistration.objects.exists() and not Heartbeat.objects.exists()
    pending = heartbeats._registration
    assert pending is not None and pending.failures == 1 and not pending.done

    pending.name = "worker:w4@host"  # the database takes it now
    heartbeats._write(pending.name)  # what the heartbeat timer runs
    assert pending.done
    assert dict(EndpointRegistration.objects.values_list("outcome", "attempts")) == {"ok": 1, "failed": 1}
    assert Heartbeat.objects.get(name="worker:w4@host").started_at is not None
    heartbeats._write(pending.name)  # registered once, whatever the beats after
    assert EndpointRegistration.objects.get(outcome="ok").attempts == 1


def test_services_bound_counts_the_kinds_on_the_queues_a_worker_consumes() -> None:
    relay = {k for k in registry.kinds() if registry.get(k).queue == "relay"}
    assert relay and workflow_services(["relay"]) == len(relay)
    assert workflow_services(["triggers"]) + workflow_services(["relay"]) + workflow_services(["workflows"]) == len(
        registry.kinds()
    )
    assert workflow_services([]) == 0


@pytest.mark.django_db
def test_an_instrument_that_fails_is_reported_and_the_others_still_served() -> None:
    name = "dalp.ddwf.test.broken"

    @telemetry_metrics.observable(name=name, kind="gauge", unit="1", description="Always fails.")
    def broken() -> Iterator[Any]:
        raise RuntimeError("database gone")
        yield

    try:
        runs("engine.noop", Phase.COMPLETED, 1)
        samples = scrape()
        assert samples[("orchestrator_metrics_collector_errors", (("collector", name),))] == 1
        assert not any(k[0] == "dalp_ddwf_test_broken_ratio" for k in samples)
        key = ("dalp_ddwf_workflow_completed_total", (("outcome", "success"), ("workflow_type", "engine.noop")))
        assert samples[key] == 1
    finally:
        del telemetry_metrics.OBSERVABLES[name]
        COLLECTORS[:] = [fn for fn in COLLECTORS if fn.__name__ != name]


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "console,otlp"}, True),
    ],
)
def test_otlp_export_follows_the_standard_variables(env: dict[str, str], expected: bool) -> None:
    assert telemetry_metrics.otlp_configured(env) is expected


# --- A real OTLP/HTTP receiver ---------------------------------------------------------------


class Receiver:
    """An OTLP/HTTP metrics endpoint: decodes each ExportMetricsServiceRequest it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with received.lock:
                    received.paths.append(self.path)
                if self.path != "/v1/metrics":  # traces, when tracing is on too
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                with received.lock:
                    received.requests.append(request)
                answer = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def latest(self) -> tuple[dict[str, Any], dict[str, dict[tuple[tuple[str, str], ...], float]]]:
        """The last export's resource attributes, and its dalp.ddwf points by metric and attributes."""
        with self.lock:
            requests = list(self.requests)
        for request in reversed(requests):
            points: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
            resource: dict[str, Any] = {}
            for rm in request.resource_metrics:
                resource = {a.key: a.value.string_value for a in rm.resource.attributes}
                for sm in rm.scope_metrics:
                    if sm.scope.name != "dalp.ddwf":
                        continue
                    for metric in sm.metrics:
                        data = getattr(metric, metric.WhichOneof("data"))
                        points[metric.name] = {
                            tuple(sorted((a.key, a.value.string_value) for a in p.attributes)): (
                                p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                            )
                            for p in data.data_points
                        }
            if points:
                return resource, points
        return {}, {}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.mark.django_db
def test_the_meter_provider_exports_every_instrument_over_otlp(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{receiver.url}/v1/metrics")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")  # only the flush below exports
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orchestrator-test")
    runs("engine.noop", Phase.COMPLETED, 2)
    HeartbeatFactory.create(name="worker:w3@host", started_at=ago(5), startup_ms=800, services_bound=6)
    provider = telemetry_metrics.otlp_export_start()
    assert provider is not None
    try:
        assert provider.force_flush()
        resource, points = wait_until(lambda: receiver.latest()[1] and receiver.latest(), message="an export")
    finally:
        telemetry_metrics.otlp_export_stop()
    assert resource["service.name"] == "orchestrator-test"
    assert set(points) == INSTRUMENTS
    assert points["dalp.ddwf.workflow.completed"] == {(("outcome", "success"), ("workflow.type", "engine.noop")): 2}
    assert points["dalp.ddwf.endpoint.registrations"] == {(("outcome", "ok"),): 0, (("outcome", "failed"),): 0}
    assert points["dalp.ddwf.workflow.stalled"][(("workflow.type", "engine.noop"),)] == 0
    assert points["dalp.ddwf.startup.duration_ms"] == {(("worker", "w3@host"),): 800}
    assert points["dalp.ddwf.services.bound"] == {(("worker", "w3@host"),): 6}


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_beat_exports_what_a_real_worker_registered_over_otlp(
    receiver: Receiver, workers: Workers, worker_env: dict[str, str]
) -> None:
    with transaction.atomic():
        runs("engine.noop", Phase.COMPLETED, 2)
    worker = workers.start(concurrency=1)
    registered = wait_until(
        lambda: Heartbeat.objects.filter(name__startswith="worker:", started_at__isnull=False).first(),
        timeout=30,
        message="the worker's registration",
    )
    otlp = {
        **worker_env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_SERVICE_NAME": "orchestrator-beat-test",
    }
    beat = beat_start(otlp)
    try:
        resource, points = wait_until(
            lambda: receiver.latest()[1] and receiver.latest(), timeout=30, message="an export from beat"
        )
    finally:
        beat.stop()
    assert worker.alive
    assert "/v1/metrics" in receiver.paths  # from beat alone: the worker exports no metrics
    assert resource["service.name"] == "orchestrator-beat-test"
    assert set(points) == INSTRUMENTS
    # The row the worker registered is the one its heartbeat keeps fresh.
    workers_seen = Heartbeat.objects.filter(name__startswith="worker:").values_list("name", flat=True)
    assert list(workers_seen) == [registered.name]
    hostname = registered.name.removeprefix("worker:")
    assert points["dalp.ddwf.endpoint.registrations"][(("outcome", "ok"),)] == 1
    # What the worker's own registry holds: this test process may have registered more kinds
    # (other tests declare workflows of their own), so the count is the worker's, not ours.
    assert registered.services_bound > 0
    assert points["dalp.ddwf.services.bound"] == {(("worker", hostname),): registered.services_bound}
    startup = points["dalp.ddwf.startup.duration_ms"][(("worker", hostname),)]
    assert startup == registered.startup_ms and 0 < startup < 60_000
    assert points["dalp.ddwf.workflow.completed"] == {(("outcome", "success"), ("workflow.type", "engine.noop")): 2}
    assert points["dalp.ddwf.exchange_rate.schedulers.active"] == {(): 0}
