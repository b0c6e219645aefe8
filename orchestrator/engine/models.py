"""The durable workflow engine's records: runs, the step journal and the transition trail."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models


class Phase(models.TextChoices):
    """Phases of a run (docs/engine.md). Active phases have a step to execute; waiting phases wait
    for a time or an event; the rest are where a run stops."""

    SUBMITTING = "submitting", "Submitting"
    AWAITING_APPROVAL = "awaiting-approval", "Awaiting approval"
    CONFIRMING = "confirming", "Confirming"
    COMPENSATING = "compensating", "Compensating"
    COMPLETED = "completed", "Completed"
    BLOCKED = "blocked", "Blocked"
    FAILED = "failed", "Failed"
    DEAD_LETTER = "dead-letter", "Dead letter"


ACTIVE_PHASES = (Phase.SUBMITTING, Phase.COMPENSATING)
WAITING_PHASES = (Phase.AWAITING_APPROVAL, Phase.CONFIRMING)
# Blocked is final: a step refused to go on as a decision (a policy said no), not a fault.
FINAL_PHASES = (Phase.COMPLETED, Phase.FAILED, Phase.BLOCKED)


class WorkflowRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=100, db_index=True)
    idempotency_key = models.CharField(max_length=255, unique=True)
    phase = models.CharField(max_length=20, choices=Phase.choices, default=Phase.SUBMITTING)
    correlation_id = models.CharField(max_length=64, db_index=True)
    input = models.JSONField(default=dict, blank=True)
    # Outputs of the steps done so far, by step name: what later steps and the status API read.
    outputs = models.JSONField(default=dict, blank=True)
    current_step = models.PositiveIntegerField(default=0)
    step_name = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Failed attempts of the current step.")
    error = models.TextField(blank=True)
    transaction_id = models.CharField(max_length=100, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    # When the current step should run next. The sweep dispatches runs whose time has come and
    # that nothing is carrying (dispatched_at older than due_at), and re-dispatches stalled ones.
    due_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # A step that runs outside a transaction holds this lease instead of the row lock.
    lease_until = models.DateTimeField(null=True, blank=True)
    # Who holds the lease (docs/engine.md, "Leases and dead workers"): the PostgreSQL session
    # of the claiming worker holds advisory lock (LEASE_LOCK_CLASS, lease_lock) until the step is
    # recorded. PostgreSQL drops it when that session ends, so a free lock under a live lease
    # means its worker died, provided the server is still the one it was taken on
    # (lease_server: pg_postmaster_start_time() then). lease_owner is "<host>:<pid>", for people.
    lease_lock = models.IntegerField(null=True, blank=True)
    lease_server = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True)
    # Deliveries of the current step that came back unacknowledged (their worker process died
    # during them, or the worker stopped holding them); reset when a step is recorded. Past
    # WORKFLOW_MAX_REDELIVERIES each counts as a failed attempt (docs/engine.md).
    redeliveries = models.PositiveSmallIntegerField(default=0)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["phase", "due_at"], name="run_phase_due_idx"),
            models.Index(fields=["kind", "phase"], name="run_kind_phase_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.phase})"


class StepStatus(models.TextChoices):
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    RETRY = "retry", "Failed, will retry"
    FAILED = "failed", "Failed"
    WAITING = "waiting", "Waiting"


class StepKind(models.TextChoices):
    FORWARD = "forward", "Step"
    COMPENSATE = "compensate", "Compensation"


class StepRun(models.Model):
    """The journal: one row per attempt of a step (or of its compensation)."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=12, choices=StepKind.choices, default=StepKind.FORWARD)
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=StepStatus.choices)
    input = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "id"]
        constraints = [
            # At most one successful journal entry per step: the exactly-once guarantee in SQL.
            models.UniqueConstraint(
                fields=["run", "index", "kind"],
                condition=models.Q(status="done"),
                name="step_done_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.attempt} {self.status}"

    @property
    def duration_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds() * 1000


class AppendOnlyError(RuntimeError):
    pass


class WorkflowTransition(models.Model):
    """Append-only audit trail of every phase change of a run. The ORM refuses to save or delete
    one; a PostgreSQL trigger refuses UPDATE, DELETE and TRUNCATE whatever issues them
    (docs/operations.md, "Audit log"). PROTECT, not CASCADE: deleting a run through the ORM
    would otherwise delete its trail with it; PROTECT refuses before any SQL and names the rows,
    where DO_NOTHING would leave the refusal to the deferred foreign key at commit."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.PROTECT, related_name="transitions")
    from_phase = models.CharField(max_length=20, blank=True)
    to_phase = models.CharField(max_length=20)
    step_name = models.CharField(max_length=100, blank=True)
    reason = models.TextField(blank=True)
    actor = models.CharField(max_length=150, blank=True, help_text="Who caused it: engine, a user, a command.")
    correlation_id = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "id"]

    def __str__(self) -> str:
        return f"{self.from_phase or '∅'} → {self.to_phase}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise AppendOnlyError("Workflow transitions are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Workflow transitions are append-only.")
