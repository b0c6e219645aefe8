"""OpenTelemetry metrics under the meter `dalp.ddwf`: how they are declared, served and exported.

The instruments themselves are declared by the operations app (orchestrator/operations/
ddwf_metrics.py, which lists them); this module is the machinery, and imports no app.

Every instrument is observable. Its callback reads PostgreSQL when the instrument is observed,
so nothing is counted in a process's memory: workers write what they do to the database (runs,
heartbeats, registrations), any process observing reads the same truth, and a restart loses
nothing. Two readers observe them:

- `/metrics` (orchestrator/infra/metrics.py). Each instrument is one scrape-time collector:
  per scrape, a MeterProvider of its own with a PrometheusMetricReader writing into a private
  CollectorRegistry, so names and types are opentelemetry-exporter-prometheus's translation
  (`dalp.ddwf.workflow.completed` -> `dalp_ddwf_workflow_completed_total`, unit `ms` ->
  `_milliseconds`) and no state is shared between the web server's threads. A callback that
  raises shows as `orchestrator_metrics_collector_errors{collector="<instrument name>"}`; the
  other instruments are still served.
- OTLP over HTTP, from beat only (`otlp_export_start`, connected to `beat_init` in
  orchestrator/celery.py), when the standard variables ask for it (`otlp_configured`). The
  values come from the database, so one exporting process is the whole truth: had every worker
  and web process exported them, a backend would get N identical copies to de-duplicate. There
  is one beat per deployment (docs/operations.md); its PeriodicExportingMetricReader observes
  every OTEL_METRIC_EXPORT_INTERVAL milliseconds (60000 by default).

What only a worker knows (how long it took to start, whether it registered) it writes to its
heartbeat row and to EndpointRegistration (orchestrator/infra/heartbeats.py); `metrics_init`
marks the start of that clock, `services_bound` asks the operations app how many workflow kinds
the worker's queues serve.

Imported by orchestrator/celery.py before Django is set up: nothing here touches models at
import time."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client.core import Metric

logger = logging.getLogger("orchestrator.telemetry_metrics")

METER_NAME = "dalp.ddwf"
DEFAULT_SERVICE_NAME = "vault-orchestrator"

InstrumentKind = Literal["counter", "up_down_counter", "gauge"]
Observe = Callable[[], Iterable[Observation]]


@dataclass(frozen=True)
class Observable:
    name: str
    kind: InstrumentKind
    unit: str
    description: str
    observe: Observe


OBSERVABLES: dict[str, Observable] = {}


def observable(*, name: str, kind: InstrumentKind, unit: str, description: str) -> Callable[[Observe], Observe]:
    """Declares an observable instrument of the `dalp.ddwf` meter (a decorator on its observe
    function, which reads the database and returns its observations). Served on /metrics from
    then on, and exported over OTLP by beat. Declaring a name again replaces its definition."""

    def declare(fn: Observe) -> Observe:
        first = name not in OBSERVABLES
        OBSERVABLES[name] = Observable(name=name, kind=kind, unit=unit, description=description, observe=fn)
        if first:
            from orchestrator.infra.metrics import collector

            collector(_prometheus_collector(name))
        return fn

    return declare


def _callback(
    spec: Observable, *, failures: list[Exception] | None, release: bool
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        try:
            return list(spec.observe())
        except Exception as exc:
            # The SDK would log it and carry on; /metrics wants it reported per instrument.
            if failures is None:
                logger.exception("dalp.ddwf instrument %s not observed", spec.name)
            else:
                failures.append(exc)
            return []
        finally:
            if release:
                _connection_release()

    return callback


def _connection_release() -> None:
    # The exporting thread lives as long as beat and Django never ends a "request" for it: give
    # its connection back to the pool after each observation instead of holding one forever.
    from django.db import connection

    if not connection.in_atomic_block:
        connection.close()


def instrument_create(meter: Meter, spec: Observable, *, failures: list[Exception] | None = None) -> None:
    callbacks = [_callback(spec, failures=failures, release=failures is None)]
    create = {
        "counter": meter.create_observable_counter,
        "up_down_counter": meter.create_observable_up_down_counter,
        "gauge": meter.create_observable_gauge,
    }[spec.kind]
    create(spec.name, callbacks=callbacks, unit=spec.unit, description=spec.description)


def prometheus_families(name: str) -> list[Metric]:
    """One instrument observed now, translated by opentelemetry-exporter-prometheus. Raises what
    its callback raised."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    # No target_info and no otel_scope_* labels: /metrics is this deployment's, and the names
    # already say dalp_ddwf.
    reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.get_empty(), shutdown_on_exit=False)
    failures: list[Exception] = []
    try:
        instrument_create(provider.get_meter(METER_NAME), OBSERVABLES[name], failures=failures)
        families = list(registry.collect())
    finally:
        provider.shutdown()
    if failures:
        raise failures[0]
    return families


def _prometheus_collector(name: str) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        return prometheus_families(name)

    # orchestrator_metrics_collector_errors names a failed collector by its __name__.
    collect.__name__ = collect.__qualname__ = name
    return collect


# --- OTLP ----------------------------------------------------------------------------------

_provider: MeterProvider | None = None


def otlp_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """The standard variables: an OTLP endpoint is set (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or
    OTEL_EXPORTER_OTLP_ENDPOINT), OTEL_SDK_DISABLED is not true, and OTEL_METRICS_EXPORTER (default
    "otlp") names otlp rather than "none"."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in environ.get("OTEL_METRICS_EXPORTER", "otlp").split(",")}
    if "otlp" not in exporters:
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _resource() -> Resource:
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    # Resource.create also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; what is passed
    # here would override them, so the default name is passed only when neither names a service.
    return Resource.create({} if named else {"service.name": DEFAULT_SERVICE_NAME})


def otlp_export_start(**_: object) -> MeterProvider | None:
    """Starts exporting every declared instrument over OTLP/HTTP, if otlp_configured() (endpoint,
    headers, timeout, compression and temporality from the exporter's OTEL_EXPORTER_OTLP_*
    variables). Called in beat; a second call returns the running provider. The SDK flushes and
    stops it at exit."""
    global _provider
    if _provider is not None or not otlp_configured():
        return _provider
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        logger.warning("dalp.ddwf metrics: OTLP protocol %s is not supported, exporting http/protobuf", protocol)
    if not OBSERVABLES:
        logger.warning("dalp.ddwf metrics: no instrument declared (is Django set up?); nothing to export")
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    _provider = MeterProvider(metric_readers=[reader], resource=_resource())
    meter = _provider.get_meter(METER_NAME)
    for spec in OBSERVABLES.values():
        instrument_create(meter, spec)
    logger.info("dalp.ddwf metrics: exporting %d instruments over OTLP", len(OBSERVABLES))
    return _provider


def otlp_export_stop() -> None:
    """Flushes and stops the OTLP export started by otlp_export_start, if any."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


# --- What only a worker knows --------------------------------------------------------------

_initialized_at: float | None = None
_services_of: Callable[[Collection[str]], int] | None = None


def metrics_init() -> None:
    """Marks telemetry set up in this process: the start of dalp.ddwf.startup.duration_ms."""
    global _initialized_at
    if _initialized_at is None:
        _initialized_at = time.monotonic()


def ms_since_init() -> int:
    metrics_init()
    assert _initialized_at is not None
    return round((time.monotonic() - _initialized_at) * 1000)


def services_bound_source(fn: Callable[[Collection[str]], int]) -> None:
    """Sets how many workflow services a worker consuming the given queues serves (the engine's
    registry is the operations app's to read; infrastructure imports no app)."""
    global _services_of
    _services_of = fn


def services_bound(queues: Collection[str]) -> int:
    return _services_of(queues) if _services_of is not None else 0
