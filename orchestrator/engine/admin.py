"""Admin for the engine: runs by kind and phase, the journal and transitions inline, replay."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.contrib.admin.models import LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from orchestrator.engine.models import Phase, StepRun, WorkflowRun, WorkflowTransition
from orchestrator.engine.services import RunNotReplayable, workflow_replay
from orchestrator.infra.admin_base import ReadOnlyAdmin

if TYPE_CHECKING:  # the admin's classes take type arguments only in django-stubs, not at run time
    StepRunInlineBase = admin.TabularInline[StepRun, WorkflowRun]
    TransitionInlineBase = admin.TabularInline[WorkflowTransition, WorkflowRun]
    WorkflowRunAdminBase = admin.ModelAdmin[WorkflowRun]
else:
    StepRunInlineBase = TransitionInlineBase = admin.TabularInline
    WorkflowRunAdminBase = admin.ModelAdmin


class ReadOnlyInline:
    """A run's rows shown on its page: the engine writes them, nobody edits them here."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return False


class StepRunInline(ReadOnlyInline, StepRunInlineBase):
    model = StepRun
    fields = ("index", "name", "kind", "attempt", "status", "started_at", "duration", "output", "error")
    readonly_fields = fields
    ordering = ("id",)

    @admin.display(description="ms")
    def duration(self, obj: StepRun) -> str:
        ms = obj.duration_ms
        return "" if ms is None else f"{ms:.1f}"


class TransitionInline(ReadOnlyInline, TransitionInlineBase):
    model = WorkflowTransition
    fields = ("created_at", "from_phase", "to_phase", "step_name", "actor", "reason")
    readonly_fields = fields
    ordering = ("id",)


PHASE_COLOURS = {
    Phase.COMPLETED: "#2e7d32",
    Phase.FAILED: "#c62828",
    Phase.DEAD_LETTER: "#6a1b9a",
    Phase.BLOCKED: "#ef6c00",
}


@admin.register(WorkflowRun)
class WorkflowRunAdmin(WorkflowRunAdminBase):
    list_display = (
        "id",
        "kind",
        "phase_badge",
        "step_name",
        "attempts",
        "short_error",
        "created_at",
        "updated_at",
    )
    list_filter = ("phase", "kind", "created_at")
    search_fields = ("id", "idempotency_key", "correlation_id", "transaction_id")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in WorkflowRun._meta.fields]
    inlines = [StepRunInline, TransitionInline]
    actions = ["replay"]
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        # Every field is read-only: a "Save" would only rewrite the whole row without the run's
        # row lock, racing the engine (a lost update of phase/current_step). Runs move through
        # the engine's services only; the replay action is how an operator moves one.
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        # Replaying changes a run: it needs the model's change permission, not just view.
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.display(description="phase", ordering="phase")
    def phase_badge(self, obj: WorkflowRun) -> str:
        colour = PHASE_COLOURS.get(Phase(obj.phase), "#1565c0")
        return format_html('<b style="color:{}">{}</b>', colour, obj.phase)

    @admin.display(description="error")
    def short_error(self, obj: WorkflowRun) -> str:
        return obj.error[:80]

    @admin.action(description="Replay selected dead-lettered runs", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        replayed, refused = 0, 0
        for run in queryset:
            try:
                workflow_replay(run_id=run.id, actor=f"admin:{request.user}")
                replayed += 1
            except RunNotReplayable:
                refused += 1
        if replayed:
            self.message_user(request, f"Replayed {replayed} run(s).", messages.SUCCESS)
        if refused:
            self.message_user(
                request, f"{refused} run(s) were not in dead-letter and were left alone.", messages.WARNING
            )


@admin.register(WorkflowTransition)
class WorkflowTransitionAdmin(ReadOnlyAdmin):
    """The audit trail: readable by staff, changeable by nobody."""

    list_display = ("created_at", "run", "from_phase", "to_phase", "step_name", "actor", "correlation_id")
    list_filter = ("to_phase", "actor")
    search_fields = ("run__id", "correlation_id")
    date_hierarchy = "created_at"


@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyAdmin):
    """Django's record of every change made in this admin, and of every replay or discard made
    from the operations dashboard: part of the audit log, so nobody edits it here either."""

    list_display = ("action_time", "user", "content_type", "object_repr", "action_flag", "change_message")
    list_filter = ("action_flag", "content_type")
    search_fields = ("object_repr", "object_id", "user__username", "change_message")
    date_hierarchy = "action_time"
