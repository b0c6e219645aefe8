"""Admin for alerts: notification channels are configured here; alerts and their deliveries are
written only by the evaluator and the delivery tasks, and read here."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from orchestrator.infra.admin_base import ReadOnlyAdmin
from orchestrator.operations.alerting.delivery import SEND_ERRORS, channel_test_send
from orchestrator.operations.models import Alert, AlertDelivery, AlertRule, AlertState, NotificationChannel


class ChannelForm(forms.ModelForm):
    url = forms.URLField(
        max_length=500,
        required=False,
        assume_scheme="https",
        help_text=NotificationChannel._meta.get_field("url").help_text,
    )
    rules = forms.MultipleChoiceField(
        choices=AlertRule.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every rule, including rules added later.",
    )

    class Meta:
        model = NotificationChannel
        fields = ("name", "kind", "emails", "url", "enabled", "rules")


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    form = ChannelForm
    list_display = ("name", "kind", "target", "enabled", "rule_list")
    list_filter = ("kind", "enabled")
    readonly_fields = ("secret", "created_at")
    actions = ("send_test",)

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> tuple[str, ...]:
        # The secret is generated on save; it is shown (read-only) from then on, for the receiver.
        return ("secret", "created_at") if obj is not None else ()

    @admin.display(description="sends to")
    def target(self, channel: NotificationChannel) -> str:
        return ", ".join(channel.addresses) if channel.kind == "email" else channel.url

    @admin.display(description="rules")
    def rule_list(self, channel: NotificationChannel) -> str:
        return ", ".join(channel.rules) if channel.rules else "all"

    @admin.action(description="Send a test notification")
    def send_test(self, request: HttpRequest, queryset: QuerySet[NotificationChannel]) -> None:
        for channel in queryset:
            try:
                channel_test_send(channel=channel)
            except SEND_ERRORS as exc:
                messages.error(request, f"{channel.name}: {exc.__class__.__name__}: {exc}")
            else:
                messages.success(request, f"{channel.name}: test notification sent.")


class DeliveryInline(admin.TabularInline):
    model = AlertDelivery
    extra = 0
    can_delete = False
    fields = ("channel", "event", "status", "attempts", "last_error", "created_at", "sent_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("state_badge", "rule", "key", "summary", "open_link", "started_at", "last_seen_at", "resolved_at")
    list_filter = ("state", "rule")
    search_fields = ("key", "summary")
    inlines = (DeliveryInline,)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(description="state", ordering="state")
    def state_badge(self, alert: Alert) -> str:
        colour = "#ba2121" if alert.state == AlertState.FIRING else "#417505"
        return format_html('<strong style="color: {}">{}</strong>', colour, alert.get_state_display().upper())

    @admin.display(description="link")
    def open_link(self, alert: Alert) -> str:
        return format_html('<a href="{}">open</a>', alert.link)


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("alert", "channel", "event", "status", "attempts", "last_error", "created_at", "sent_at")
    list_filter = ("status", "event", "channel")
    list_select_related = ("alert", "channel")
