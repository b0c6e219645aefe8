"""Records of infrastructure every app shares: API idempotency, process heartbeats and worker
registrations.

Both tables were created by the engine app's first migrations; they kept their names when the
models moved here (migrations 0001 of infra and 0005 of the engine move only Django's state)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    """The first answer to a POST with an Idempotency-Key, per API client."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    status_code = models.PositiveSmallIntegerField(default=0)
    # The answer, with each secret field (a view's `secret=`) as null; the secrets themselves are
    # in `sealed`, field -> sealed by the key manager (orchestrator/infra/sealing.py).
    body = models.JSONField(null=True)
    sealed = models.JSONField(default=dict, blank=True)
    # The master key version of everything in `sealed` (null when nothing is): rotation re-seals
    # the records under an older one.
    sealed_version = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "orchestrator_idempotencyrecord"  # created by the engine app's migrations, before infra
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="idempotency_key_per_client")]

    def __str__(self) -> str:
        return f"{self.owner_id}:{self.key}"


class Heartbeat(models.Model):
    """The last time a process of a kind (beat, worker) proved it was alive."""

    # "beat", or "worker:<celery hostname>" (one row per worker, see heartbeats.py).
    name = models.CharField(max_length=200, primary_key=True)
    at = models.DateTimeField()
    # Written once by a worker when it is fully started (heartbeats.worker_registered), for the
    # dalp.ddwf metrics: when, how long it took from telemetry setup, and how many workflow kinds
    # it serves on the queues it consumes. Null for beat, and for a worker not registered yet.
    started_at = models.DateTimeField(null=True, blank=True)
    startup_ms = models.PositiveIntegerField(null=True, blank=True)
    services_bound = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "orchestrator_heartbeat"

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%H:%M:%S}"


class EndpointRegistration(models.Model):
    """How many times workers tried to register at start (dalp.ddwf.endpoint.registrations), per
    outcome. A counter kept in the database, one row per outcome, so it only goes up, whichever
    workers come and go, and every process reads the same number."""

    class Outcome(models.TextChoices):
        OK = "ok", "OK"
        FAILED = "failed", "Failed"

    outcome = models.CharField(max_length=10, choices=Outcome.choices, primary_key=True)
    attempts = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.outcome}: {self.attempts}"
