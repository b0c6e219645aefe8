"""The automation API's records (seed 001): executors, configs, subscriptions."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Executor(models.Model):
    """An automation author's executor, registered by (and owned by) one API client."""

    registry_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    address = models.CharField(max_length=42, help_text="Signs configs (EIP-712) and execution requests.")
    name = models.CharField(max_length=200)
    metadata = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="executors")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


class SourceType(models.TextChoices):
    INTERVAL = "INTERVAL", "Interval"
    FILTER = "FILTER", "Event filter"


class ConfigStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DELETED = "deleted", "Deleted"


class AutomationConfig(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    executor = models.ForeignKey(Executor, on_delete=models.PROTECT, related_name="configs")
    source_type = models.CharField(max_length=8, choices=SourceType.choices)
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    filter = models.JSONField(null=True, blank=True, help_text="eth_getLogs filter for FILTER sources.")
    base_url = models.CharField(max_length=500, help_text="Exactly as sent and signed.")
    verify_payload = models.BooleanField(default=True)
    relayer_count = models.PositiveSmallIntegerField(default=1)
    autosign = models.BooleanField(default=False)
    # The HMAC key, sealed by the key manager; shown to the client once, in the create response.
    hmac_version = models.PositiveIntegerField()
    hmac_nonce = models.BinaryField(editable=False)
    hmac_ciphertext = models.BinaryField(editable=False)
    relayers = models.ManyToManyField("relayer.SigningKey", related_name="+")
    executor_key = models.ForeignKey(
        "relayer.SigningKey",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="With autosign: the key that signs execution requests for the executor.",
    )
    verifying_key = models.ForeignKey(
        "relayer.SigningKey",
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Signs x-verifying-signature on every hook request.",
    )
    status = models.CharField(max_length=8, choices=ConfigStatus.choices, default=ConfigStatus.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["executor"], condition=Q(status="active"), name="one_active_config"),
        ]

    def __str__(self) -> str:
        return f"config {self.id} ({self.source_type}, {self.status})"


class UsedSignature(models.Model):
    """Every config signature ever accepted: one is never accepted twice (replays)."""

    signature = models.CharField(max_length=140, unique=True)
    action = models.CharField(max_length=10)
    config = models.ForeignKey(AutomationConfig, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.action} {self.signature[:12]}…"


class SubscriptionStatus(models.IntegerChoices):
    ACTIVE = 2, "Active"
    CANCELLED = 3, "Cancelled"


class Subscription(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    config = models.ForeignKey(AutomationConfig, on_delete=models.PROTECT, related_name="subscriptions")
    chain_id = models.PositiveBigIntegerField()
    sub_account_address = models.CharField(max_length=42)
    token_inputs = models.JSONField(default=dict, blank=True)
    token_limits = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    fee_token = models.CharField(max_length=42, blank=True)
    fee_amount = models.CharField(max_length=80, default="0")
    commit_hash = models.CharField(max_length=66, blank=True)
    status = models.PositiveSmallIntegerField(choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE)
    # INTERVAL scheduling: the dispatcher claims rows whose next_run_at has come.
    next_run_at = models.DateTimeField(null=True, blank=True)
    execution_count = models.PositiveIntegerField(default=0)
    prev_execution_at = models.DateTimeField(null=True, blank=True)
    prev_execution_id = models.CharField(max_length=64, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="subscriptions")
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["next_run_at"], condition=Q(status=2), name="subscription_due_idx"),
        ]

    def __str__(self) -> str:
        return f"subscription {self.id} ({self.get_status_display()})"
