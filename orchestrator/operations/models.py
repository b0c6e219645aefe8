"""Alerts and where they are sent (docs/operations.md, "Alerts").

An Alert is one instance of a rule's condition (a rule plus a subject key) from the moment the
evaluator first sees it until it sees it gone. At most one alert per (rule, key) is firing: a
partial unique index, so two evaluators running at once cannot both open it, and the one whose
INSERT wins is the one that creates its deliveries. A delivery is one event (firing, resolved)
of one alert to one channel, unique on the three, so each event is sent at most once per channel
under normal operation (a worker killed between sending and recording sends it again; the
webhook-id, the delivery's id, lets the receiver drop the repeat)."""

from __future__ import annotations

import base64
import secrets
import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105  (the format's prefix, not a secret)


def webhook_secret_new() -> str:
    """A Standard Webhooks secret: "whsec_" and the base64 of 32 random bytes (the HMAC key)."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_secret_key(secret: str) -> bytes:
    """The HMAC key a Standard Webhooks secret stands for: its base64 part, decoded."""
    return base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))


class AlertRule(models.TextChoices):
    DEAD_LETTER = "dead_letter", "Dead-lettered run"
    STALLED_RUNS = "stalled_runs", "Stalled runs"
    SIGNER_LOW_BALANCE = "signer_low_balance", "Relayer signer low on gas"
    TRIGGER_LATE = "trigger_late", "Automation triggers late"
    PROPOSAL_EXPIRING = "proposal_expiring", "Proposal expiring without quorum"
    RPC_DOWN = "rpc_down", "Chain RPC not answering"


class ChannelKind(models.TextChoices):
    EMAIL = "email", "E-mail"
    WEBHOOK = "webhook", "Webhook"


class NotificationChannel(models.Model):
    """Where alerts go: a list of e-mail addresses or a webhook URL, for all rules or some."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=8, choices=ChannelKind.choices)
    emails = models.TextField(blank=True, help_text="E-mail channels: addresses, separated by commas or new lines.")
    url = models.URLField(max_length=500, blank=True, help_text="Webhook channels: the URL alerts are POSTed to.")
    secret = models.CharField(
        max_length=100,
        default=webhook_secret_new,
        editable=False,
        help_text="Webhook channels: the Standard Webhooks secret the receiver verifies signatures with.",
    )
    enabled = models.BooleanField(default=True)
    rules = models.JSONField(default=list, blank=True, help_text="The rules this channel receives; empty: all.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        if self.kind == ChannelKind.EMAIL and not self.addresses:
            raise ValidationError({"emails": "An e-mail channel needs at least one address."})
        if self.kind == ChannelKind.WEBHOOK and not self.url:
            raise ValidationError({"url": "A webhook channel needs a URL."})
        unknown = set(self.rules or []) - set(AlertRule.values)
        if unknown:
            raise ValidationError({"rules": f"Unknown rules: {', '.join(sorted(unknown))}."})

    @property
    def addresses(self) -> list[str]:
        return [a.strip() for a in self.emails.replace("\n", ",").split(",") if a.strip()]

    def wants(self, rule: str) -> bool:
        return not self.rules or rule in self.rules


class AlertState(models.TextChoices):
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class Alert(models.Model):
    rule = models.CharField(max_length=32, choices=AlertRule.choices)
    key = models.CharField(max_length=200, help_text="The subject within the rule: a run, a chain, a signer.")
    summary = models.TextField()
    link = models.URLField(max_length=500, help_text="The admin page that shows the subject.")
    state = models.CharField(max_length=8, choices=AlertState.choices, default=AlertState.FIRING)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "key"], condition=Q(state=AlertState.FIRING), name="one_firing_alert_per_key"
            ),
        ]
        indexes = [models.Index(fields=["state", "rule"], name="alert_state_rule_idx")]

    def __str__(self) -> str:
        return f"{self.rule}:{self.key} ({self.state})"


class DeliveryEvent(models.TextChoices):
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class AlertDelivery(models.Model):
    """One event of one alert to one channel. A worker takes it by setting `lease_until`; the
    evaluator enqueues a pending one again when nobody holds it for ALERTS_DELIVERY_STALE_SECONDS."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=8, choices=DeliveryEvent.choices)
    status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        verbose_name_plural = "alert deliveries"
        constraints = [
            models.UniqueConstraint(fields=["alert", "channel", "event"], name="one_delivery_per_alert_event"),
        ]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(status=DeliveryStatus.PENDING), name="alert_delivery_pending_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alert} {self.event} to {self.channel.name} ({self.status})"
