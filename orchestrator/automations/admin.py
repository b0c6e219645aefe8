"""Admin for automations: executors, configs (never their secrets), subscriptions."""

from __future__ import annotations

from django.contrib import admin

from orchestrator.admin_base import ReadOnlyAdmin
from orchestrator.automations.models import AutomationConfig, Executor, Subscription


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
    list_display = ("id", "config", "chain_id", "sub_account_address", "status", "next_run_at", "execution_count")
    list_filter = ("status", "chain_id")
    search_fields = ("id", "sub_account_address")
