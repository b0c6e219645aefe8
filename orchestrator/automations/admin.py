"""Admin for automations: executors, configs (never their secrets), subscriptions with their
next run and last outcome, and the execution log (firings). All read-only: state changes go
through the API and the services."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest

from orchestrator.automations.models import AutomationConfig, Executor, Firing, LogCursor, Subscription
from orchestrator.infra.admin_base import ReadOnlyAdmin


@admin.register(Executor)
class ExecutorAdmin(ReadOnlyAdmin):
    list_display = ("registry_id", "name", "address", "owner", "created_at")
    search_fields = ("registry_id", "name", "address")


@admin.register(AutomationConfig)
class AutomationConfigAdmin(ReadOnlyAdmin):
    list_display = ("id", "executor", "source_type", "interval_seconds", "base_url", "status", "created_at")
    list_filter = ("status", "source_type")
    search_fields = ("id", "executor__registry_id", "base_url")
    exclude = ("hmac_nonce", "hmac_ciphertext", "hmac_version")


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "config",
        "chain_id",
        "sub_account_address",
        "status",
        "next_run_at",
        "execution_count",
        "last_outcome",
    )
    list_filter = ("status", "chain_id", "config__source_type")
    search_fields = ("id", "sub_account_address")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Subscription]:
        latest = Firing.objects.filter(subscription=OuterRef("pk")).order_by("-created_at")
        return (
            super()
            .get_queryset(request)
            .select_related("config")
            .annotate(
                last_status=Subquery(latest.values("status")[:1]), last_reason=Subquery(latest.values("reason")[:1])
            )
        )

    @admin.display(description="last outcome")
    def last_outcome(self, sub: Subscription) -> str:
        status = getattr(sub, "last_status", None)
        if not status:
            return "—"
        reason = getattr(sub, "last_reason", "") or ""
        return f"{status}: {reason[:80]}" if reason else status


@admin.register(Firing)
class FiringAdmin(ReadOnlyAdmin):
    list_display = (
        "request_id",
        "subscription",
        "trigger_type",
        "due_at",
        "status",
        "reason",
        "attempts",
        "hook_ms",
        "report_status",
        "output_tx_hash",
        "created_at",
    )
    list_filter = ("status", "trigger_type", "report_status")
    search_fields = ("request_id", "subscription__id", "correlation_id", "output_tx_hash")
    date_hierarchy = "created_at"
    list_select_related = ("subscription",)
    show_full_result_count = False  # COUNT(*) over a large log on every page is slow


@admin.register(LogCursor)
class LogCursorAdmin(ReadOnlyAdmin):
    list_display = ("chain", "block_number", "block_hash", "updated_at")
