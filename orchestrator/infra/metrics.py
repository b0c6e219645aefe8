"""/metrics for Prometheus: every app's scrape-time collectors, run when Prometheus scrapes.

An app adds metrics by registering a function that yields metric families, in a module its
AppConfig.ready imports:

    from orchestrator.infra.metrics import collector

    @collector
    def automation_firings() -> Iterator[Metric]:
        yield GaugeMetricFamily(...)

A collector that raises is reported in `orchestrator_metrics_collector_errors{collector}`; the
others are still served."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger("orchestrator.metrics")

Collector = Callable[[], Iterable[Metric]]
COLLECTORS: list[Collector] = []


def collector(fn: Collector) -> Collector:
    """Registers a scrape-time collector (a decorator; registering twice is harmless)."""
    if fn not in COLLECTORS:
        COLLECTORS.append(fn)
    return fn


class ScrapeTimeCollector:
    """Runs every registered collector; one that fails does not hide the others."""

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily(
            "orchestrator_metrics_collector_errors",
            "1 for a collector that failed during this scrape (see the web log).",
            labels=["collector"],
        )
        for fn in COLLECTORS:
            try:
                yield from list(fn())
            except Exception:
                logger.exception("metrics collector %s failed", fn.__name__)
                errors.add_metric([fn.__name__], 1)
        yield errors


def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeTimeCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
