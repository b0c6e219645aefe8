"""The operations dashboard and the audit export, inside the admin (staff only; see urls.py).

Reading needs the view permission on workflow runs; Replay and Discard need the change
permission, as the run admin's Replay action does. Both are POSTs with CSRF, go through the
engine's services (which append the transition with the user as actor) and add an admin
LogEntry, so the decision shows in the run's history and in the audit export."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET, require_POST

from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.services import RunNotDiscardable, RunNotReplayable, workflow_discard, workflow_replay
from orchestrator.operations.audit import audit_export
from orchestrator.operations.forms import AuditExportForm, DiscardForm
from orchestrator.operations.selectors import operations_overview

VIEW_RUNS = "orchestrator.view_workflowrun"
OPERATE_RUNS = "orchestrator.change_workflowrun"
VIEW_AUDIT = "orchestrator.view_workflowtransition"
REFRESH_SECONDS = 15
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json", "jsonl": "application/x-ndjson"}


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _log(request: HttpRequest, run: WorkflowRun, message: str) -> None:
    user_id = request.user.pk
    assert user_id is not None  # admin_view let only a signed-in staff user in
    LogEntry.objects.log_actions(
        user_id=user_id, queryset=[run], action_flag=CHANGE, change_message=message, single_object=True
    )


@require_GET
def dashboard(request: HttpRequest) -> TemplateResponse:
    _require(request, VIEW_RUNS)
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "overview": operations_overview(),
        "can_operate": request.user.has_perm(OPERATE_RUNS),
        "can_audit": request.user.has_perm(VIEW_AUDIT),
        "discard_form": DiscardForm(),
        "refresh_seconds": REFRESH_SECONDS,
    }
    return TemplateResponse(request, "admin/operations/dashboard.html", context)


def _operate(
    request: HttpRequest, verb: str, operate: Callable[[], WorkflowRun], note: str, done: Callable[[WorkflowRun], str]
) -> HttpResponseRedirect:
    """Replays or discards a run. One transaction: the engine's transition and the LogEntry commit
    together, and a replay's step message is sent only after both are in."""
    try:
        with transaction.atomic():
            run = operate()
            _log(request, run, note)
    except WorkflowRun.DoesNotExist:
        raise Http404("no such run") from None
    except (RunNotReplayable, RunNotDiscardable) as exc:
        messages.warning(request, f"Not {verb}: {exc}.")
    else:
        messages.success(request, done(run))
    return redirect("ops-dashboard")


@require_POST
def run_replay(request: HttpRequest, run_id: uuid.UUID) -> HttpResponseRedirect:
    _require(request, OPERATE_RUNS)
    return _operate(
        request,
        "replayed",
        lambda: workflow_replay(run_id=run_id, actor=_actor(request)),
        "Replayed from the operations dashboard.",
        lambda run: f"Replayed {run.kind} {run.id}; it continues at {run.step_name}.",
    )


@require_POST
def run_discard(request: HttpRequest, run_id: uuid.UUID) -> HttpResponseRedirect:
    _require(request, OPERATE_RUNS)
    form = DiscardForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Not discarded: a discard needs a reason.")
        return redirect("ops-dashboard")
    reason = form.cleaned_data["reason"]
    return _operate(
        request,
        "discarded",
        lambda: workflow_discard(run_id=run_id, actor=_actor(request), reason=reason),
        f"Discarded from the operations dashboard: {reason}",
        lambda run: f"Discarded {run.kind} {run.id}: it is now failed.",
    )


@require_GET
def audit(request: HttpRequest) -> HttpResponseBase:
    """The export form; submitted (it has `since`), the file itself, streamed."""
    _require(request, VIEW_AUDIT)
    form = AuditExportForm(request.GET) if "since" in request.GET else None
    if form is not None and form.is_valid():
        since, until = form.cleaned_data["range"]
        fmt = form.cleaned_data["format"]
        response = StreamingHttpResponse(
            audit_export(since=since, until=until, format=fmt), content_type=CONTENT_TYPES[fmt]
        )
        filename = f"audit-{since:%Y%m%dT%H%M%S}-{until:%Y%m%dT%H%M%S}.{fmt}"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
    context = {
        **admin.site.each_context(request),
        "title": "Audit log export",
        "form": form or AuditExportForm(initial=AuditExportForm.initial_values()),
    }
    return TemplateResponse(request, "admin/operations/audit.html", context)
