"""The automation API's records (docs/automations.md): executors, configs, subscriptions, and
the firings that make up each subscription's execution log."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


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
    allowed_targets = models.JSONField(
        default=list, blank=True, help_text="If not empty, tasks may only call these addresses."
    )
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
    """Every config signature ever accepted, remembered by what it signed: the signer and the
    EIP-712 digest. Another encoding of the same signature (the high-s twin, another v) signs
    the same digest, so it is a replay too (docs/api.md, "Signatures")."""

    # Empty only on rows from before 0003 that it could not recompute, or that were replays the
    # old byte-keyed check let through (see that migration); every new row has both.
    signer = models.CharField(max_length=42, blank=True, default="")
    digest = models.CharField(max_length=66, blank=True, default="", help_text="EIP-712 hash of the KernelAction.")
    signature = models.CharField(max_length=140, help_text="Canonical: low s, v 27/28 (older rows: as sent).")
    action = models.CharField(max_length=10)
    config = models.ForeignKey(AutomationConfig, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["signer", "digest"], condition=~Q(digest=""), name="used_signature_once")
        ]

    def __str__(self) -> str:
        return f"{self.action} {(self.digest or self.signature)[:12]}…"


class SubscriptionStatus(models.IntegerChoices):
    ACTIVE = 2, "Active"
    CANCELLED = 3, "Cancelled"


class Subscription(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    config = models.ForeignKey(AutomationConfig, on_delete=models.PROTECT, related_name="subscriptions")
    chain_id = models.PositiveBigIntegerField()
    sub_account_address = models.CharField(max_length=42)
    # A Safe sub-account's VaultPolicyModule: its tasks run through the module's executeRequest
    # (services/module_route.py). Empty: tasks are plain transactions from the relayer key.
    module_address = models.CharField(max_length=42, blank=True, default="")
    token_inputs = models.JSONField(default=dict, blank=True)
    token_limits = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    fee_token = models.CharField(max_length=42, blank=True)
    fee_amount = models.CharField(max_length=80, default="0")
    commit_hash = models.CharField(max_length=66, blank=True)
    status = models.PositiveSmallIntegerField(choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE)
    # INTERVAL scheduling: the dispatcher claims rows whose next_run_at has come.
    next_run_at = models.DateTimeField(null=True, blank=True)
    # FILTER: logs from this block on match ("latest" resolves to the head when subscribing).
    from_block = models.PositiveBigIntegerField(null=True, blank=True)
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


ZERO_HASH = "0x" + "0" * 64


class FiringStatus(models.TextChoices):
    """What happened to one firing (docs/api.md, "Logs": metadata.outcome.status)."""

    PENDING = "pending", "Pending"
    RELAYED = "relayed", "Relayed"
    SKIPPED = "skipped", "Skipped"
    REFUSED = "refused", "Refused"
    FAILED = "failed", "Failed"


class ReportStatus(models.TextChoices):
    """The post-execution hook (/kernel/executed) of one firing."""

    NONE = "", "Not due"
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    SKIPPED = "skipped", "Skipped (404)"
    FAILED = "failed", "Failed"


class Firing(models.Model):
    """One firing of a subscription's trigger: one entry in its execution log.

    Created exactly once per firing key (subscription + due time, or subscription + tx hash +
    log index) by the dispatcher or the log poller, with the exact /kernel/trigger body. While
    the hook still has to be sent, `next_attempt_at` is set; a worker takes the row by setting
    `lease_token` and `lease_until`, and the sweep hands rows whose lease ran out to another."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by firing_log_idx, whose first column it is. A firing is inserted and then updated
    # twice on its way, and every write goes to every index: no index of its own, and key and
    # request_id unique by constraints (unique=True would add a LIKE twin of each, unused).
    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="firings", db_index=False)
    key = models.CharField(max_length=200)
    request_id = models.CharField(max_length=120)
    trigger_type = models.CharField(max_length=8, choices=SourceType.choices)
    due_at = models.DateTimeField(help_text="When it was due (INTERVAL) or when the log was seen (FILTER).")
    request = models.JSONField(help_text="The exact body sent to /kernel/trigger.")
    response = models.JSONField(null=True, blank=True, help_text="The executor's answer as received.")
    post_execution_state = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=FiringStatus.choices, default=FiringStatus.PENDING)
    reason = models.TextField(blank=True)
    # Delivery of /kernel/trigger.
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="First time the hook was sent.")
    answered_at = models.DateTimeField(null=True, blank=True)
    hook_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Latency of the answered call.")
    # What the answer led to.
    relay_transaction = models.ForeignKey(
        "relayer.RelayTransaction", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    workflow_run = models.ForeignKey(
        "orchestrator.WorkflowRun", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    output_tx_hash = models.CharField(max_length=66, default=ZERO_HASH)
    report_status = models.CharField(max_length=10, choices=ReportStatus.choices, default="", blank=True)
    correlation_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["subscription", "-created_at", "-id"], name="firing_log_idx"),
            models.Index(
                fields=["lease_until"], condition=Q(next_attempt_at__isnull=False), name="firing_undelivered_idx"
            ),
            models.Index(fields=["status", "-created_at"], name="firing_status_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["key"], name="firing_key_unique"),
            models.UniqueConstraint(fields=["request_id"], name="firing_request_id_unique"),
        ]

    def __str__(self) -> str:
        return f"firing {self.request_id} ({self.status})"


class LogCursor(models.Model):
    """How far the FILTER poller has scanned one chain: the last confirmed block it read."""

    chain = models.OneToOneField("relayer.Chain", on_delete=models.CASCADE, primary_key=True, related_name="+")
    block_number = models.PositiveBigIntegerField()
    block_hash = models.CharField(max_length=66, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"log cursor {self.chain_id} at {self.block_number}"
