"""Automation metrics, computed at scrape time from the firings table (collectors registered
with orchestrator.infra.metrics): firings by trigger type and outcome, their lateness (hook
sent minus due), hook latency, and post-execution reports. Counts over the whole table:
index-only on firing_status_idx, and a sequential scan for the histograms; keep the table
pruned if it grows past a few million rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from orchestrator.automations.models import Firing
from orchestrator.infra.metrics import collector

LATENESS_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
HOOK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@collector
def automation_firings() -> Iterator[Metric]:
    firings = CounterMetricFamily(
        "automation_trigger_firings",
        "Trigger firings by trigger type and outcome (pending, relayed, skipped, refused, failed).",
        labels=["trigger", "outcome"],
    )
    for trigger, outcome, n in Firing.objects.values_list("trigger_type", "status").annotate(n=Count("id")):
        firings.add_metric([trigger, outcome], n)
    yield firings
    reports = CounterMetricFamily(
        "automation_post_execution_reports",
        "/kernel/executed calls by outcome (pending, delivered, skipped on 404, failed).",
        labels=["outcome"],
    )
    for outcome, n in Firing.objects.exclude(report_status="").values_list("report_status").annotate(n=Count("id")):
        reports.add_metric([outcome], n)
    yield reports


@collector
def automation_lateness() -> Iterator[Metric]:
    late = ExpressionWrapper(F("sent_at") - F("due_at"), output_field=DurationField())
    sent = Firing.objects.filter(sent_at__isnull=False, trigger_type="INTERVAL").annotate(late=late)
    buckets = {f"le_{i}": Count("id", filter=Q(late__lte=timedelta(seconds=s))) for i, s in enumerate(LATENESS_BUCKETS)}
    row = sent.aggregate(count=Count("id"), total=Sum("late"), **buckets)
    total: timedelta | None = row["total"]
    yield HistogramMetricFamily(
        "automation_trigger_lateness_seconds",
        "INTERVAL firings: seconds from the due time to the first hook call.",
        buckets=[*((str(float(s)), row[f"le_{i}"]) for i, s in enumerate(LATENESS_BUCKETS)), ("+Inf", row["count"])],
        sum_value=total.total_seconds() if total is not None else 0.0,
    )
    answered = Firing.objects.filter(hook_ms__isnull=False)
    hook = {f"le_{i}": Count("id", filter=Q(hook_ms__lte=s * 1000)) for i, s in enumerate(HOOK_BUCKETS)}
    row = answered.aggregate(count=Count("id"), total=Sum("hook_ms"), **hook)
    yield HistogramMetricFamily(
        "automation_hook_latency_seconds",
        "Seconds an executor took to answer /kernel/trigger (answered calls).",
        buckets=[*((str(float(s)), row[f"le_{i}"]) for i, s in enumerate(HOOK_BUCKETS)), ("+Inf", row["count"])],
        sum_value=(row["total"] or 0) / 1000,
    )
