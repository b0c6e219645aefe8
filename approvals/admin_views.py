"""The proposal page's review (current and proposed allocation, compliance, decisions, the
execution's state, the intent's transactions) and the Approve / Reject pages: a confirmation
page, then a POST to proposal_approve / proposal_reject, which are the authority on who may
decide. Someone who may not decide gets a 403 page inside the admin that says why. The admin
for proposals (approvals/admin.py) is built on ProposalPagesAdmin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from approvals.forms import DecisionForm
from approvals.models import Decision, ProposalStatus, RebalanceProposal
from approvals.safe_proposals import SAFE_EXECUTE_WORKFLOW
from approvals.selectors import APPROVERS_GROUP
from approvals.services import (
    proposal_approve,
    proposal_compliance_preview,
    proposal_current_allocation,
    proposal_reject,
)
from orchestrator.engine.models import WAITING_PHASES, Phase, StepStatus, WorkflowRun
from orchestrator.infra.admin_base import DomainErrorAdminMixin
from orchestrator.infra.errors import DomainError
from vaults.models import ExecutionIntent, PolicyStatus, Protocol
from vaults.selectors import intent_relays
from vaults.services.compliance import ComplianceResult, Violation

DECISIONS = {
    Decision.APPROVE: ("Approve", "approved", proposal_approve),
    Decision.REJECT: ("Reject", "rejected", proposal_reject),
}


def is_approver(user: Any) -> bool:
    return bool(
        user.groups.filter(name=APPROVERS_GROUP).exists() or RebalanceProposal.objects.filter(approvers=user).exists()
    )


def can_decide(proposal: RebalanceProposal, user: Any) -> bool:
    """Whether to offer the buttons. Display only: the services decide on the POST."""
    return (
        proposal.status == ProposalStatus.PENDING
        and proposal.expires_at > timezone.now()
        and proposal.proposer_id != user.pk
        and proposal.approvers.filter(pk=user.pk).exists()
        and not proposal.approvals.filter(approver=user).exists()
    )


def pct_shown(value: Any) -> str:
    try:
        return f"{Decimal(str(value)):.2f}%"
    except (InvalidOperation, ValueError):
        return str(value)


def allocation_rows(proposal: RebalanceProposal, current: dict[str, str] | None) -> list[dict[str, str]]:
    """One row per protocol of the vault's chain (and any named only in the proposal), then idle."""
    proposed = proposal.proposed_allocations
    names = sorted(
        set(Protocol.objects.filter(chain=proposal.vault.chain).values_list("name", flat=True)) | set(proposed)
    )
    proposed_total = sum((Decimal(str(v)) for v in proposed.values()), Decimal(0))
    rows = [
        {
            "protocol": name,
            "current": pct_shown(current.get(name, "0")) if current is not None else "unavailable",
            "proposed": pct_shown(proposed.get(name, "0")),
        }
        for name in names
    ]
    rows.append(
        {
            "protocol": "idle",
            "current": pct_shown(current.get("idle", "0")) if current is not None else "unavailable",
            "proposed": pct_shown(Decimal(100) - proposed_total),
        }
    )
    return rows


def executed_check(intent: ExecutionIntent | None) -> ComplianceResult | None:
    """The check the execution recorded (against the policy active then), once there is an
    intent: after execution a fresh check would judge a rebalance that already happened."""
    run = intent.workflow_run if intent is not None else None
    recorded = run.outputs.get("check") if run is not None else None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("violations"), list):
        return None
    return ComplianceResult([Violation(rule=v["rule"], message=v["message"]) for v in recorded["violations"]])


def execution_run(proposal: RebalanceProposal) -> WorkflowRun | None:
    """The newest run executing the proposal (Flow B's, or a Safe vault's)."""
    return WorkflowRun.objects.filter(input__proposal=proposal.pk).order_by("-created_at").first()


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def execution_state(proposal: RebalanceProposal, run: WorkflowRun | None) -> dict[str, str]:
    """What the page says about the execution, one statement per run phase: `state` is
    waiting, stopped, failed, running, done or none (no run), `text` the sentence (empty when
    the intent below says it all). Derived from the run, so it never contradicts itself."""
    if run is None:
        if proposal.execution_error:
            return {"state": "stopped", "text": f"Stopped: {proposal.execution_error}"}
        if proposal.status == ProposalStatus.APPROVED:
            return {"state": "none", "text": "Approved; execution has not started yet."}
        return {"state": "none", "text": ""}
    if run.phase in WAITING_PHASES:
        waited = run.steps.filter(status=StepStatus.WAITING).order_by("-id").first()
        info = waited.output if waited is not None and isinstance(waited.output, dict) else {}
        what = str(info.get("waiting") or f"step {run.step_name}")
        until = run.due_at  # the Wait's resume_at: when the engine runs the step again
        # A timing rule's wait (it names `until`) ends in a fresh check; other waits look again.
        again = "the check runs again" if run.step_name == "check" or info.get("until") else "it looks again"
        when = f"; {again} at {_utc(until)}" if until is not None else ""
        return {"state": "waiting", "text": f"Waiting for {what[:1].lower()}{what[1:]}{when}"}
    if run.phase == Phase.BLOCKED:
        return {"state": "stopped", "text": f"Stopped: {run.error or proposal.execution_error}"}
    if run.phase in (Phase.FAILED, Phase.DEAD_LETTER):
        return {"state": "failed", "text": f"Failed ({run.get_phase_display().lower()}): {run.error}"}
    if run.phase == Phase.COMPLETED:
        return {"state": "done", "text": "" if proposal.intent_id is not None else "Execution completed."}
    if proposal.intent_id is not None:
        return {"state": "running", "text": ""}
    doing = f" (step {run.step_name})" if run.step_name else ""
    if run.kind == SAFE_EXECUTE_WORKFLOW:
        return {"state": "running", "text": f"The Safe transaction is being checked and sent{doing}."}
    return {"state": "running", "text": f"Approved; the intent is being prepared{doing}."}


def quorum_progress(proposal: RebalanceProposal) -> str:
    given = getattr(proposal, "approvals_given", None)
    if given is None:
        given = proposal.approvals.filter(decision=Decision.APPROVE).count()
    return f"{given} of {proposal.quorum_required}"


class ProposalPagesAdmin(DomainErrorAdminMixin, admin.ModelAdmin):
    """The review on the proposal page and the decision pages."""

    decision_template = "admin/approvals/rebalanceproposal/decision_confirmation.html"
    refused_template = "admin/approvals/rebalanceproposal/decision_refused.html"

    @contextmanager
    def domain_errors(self, request: HttpRequest, *, form: forms.Form | None = None) -> Iterator[None]:
        """A service's refusal, as these pages answer it: one the user may not make at all
        (HTTP 403) is the admin's 403; any other shows on `form` when there is one, else as a
        warning that nothing was recorded (the page then answers as if nothing was tried)."""
        try:
            yield
        except DomainError as exc:
            if exc.http_status == 403:
                raise PermissionDenied(exc.message) from exc
            if form is not None:
                form.add_error(None, exc.message)
            else:
                self.message_user(request, f"Nothing recorded: {exc.message}.", messages.WARNING)

    def review_context(self, request: HttpRequest, proposal: RebalanceProposal) -> dict[str, Any]:
        current: dict[str, str] | None
        try:
            current = proposal_current_allocation(proposal=proposal)
            current_error = ""
        except Exception as exc:  # the page must render whatever the chain does
            current, current_error = None, f"{exc.__class__.__name__}: {exc}"[:300]
        intent = proposal.intent
        compliance, compliance_error = executed_check(intent), ""
        if intent is not None and compliance is not None:
            compliance_title = f"Compliance checked at execution (policy v{intent.policy.version})"
        else:
            active = proposal.vault.policies.filter(status=PolicyStatus.ACTIVE).first()
            compliance_title = f"Compliance with the policy active now (v{active.version})" if active else "Compliance"
            try:
                compliance = proposal_compliance_preview(proposal=proposal, current=current or {})
            except Exception as exc:
                compliance_error = f"{exc.__class__.__name__}: {exc}"[:300]
        decisions = list(proposal.approvals.select_related("approver"))
        by_approver = {d.approver_id: d for d in decisions}
        approvers = [(user, by_approver.get(user.pk)) for user in proposal.approvers.order_by("username")]
        approvals_given = sum(1 for d in decisions if d.decision == Decision.APPROVE)
        transactions = list(intent_relays(intent_id=intent.pk)) if intent is not None else []
        info = (self.opts.app_label, self.opts.model_name)
        intent_url = (
            reverse("admin:vaults_executionintent_change", args=[intent.pk])
            if intent is not None and request.user.has_perm("vaults.view_executionintent")
            else ""
        )
        return {
            "allocation_rows": allocation_rows(proposal, current),
            "current_error": current_error,
            "compliance": compliance,
            "compliance_error": compliance_error,
            "compliance_title": compliance_title,
            "decisions": decisions,
            "designated": approvers,
            "approvals_given": approvals_given,
            "quorum_progress": f"{approvals_given} of {proposal.quorum_required}",
            "intent": intent,
            "intent_url": intent_url,
            "transactions": transactions,
            "execution": execution_state(proposal, execution_run(proposal)),
            "can_decide": can_decide(proposal, request.user),
            "approve_url": reverse("admin:{}_{}_approve".format(*info), args=[proposal.pk]),
            "reject_url": reverse("admin:{}_{}_reject".format(*info), args=[proposal.pk]),
        }

    # --- Approve / Reject: a confirmation page, then a POST to the service ---------------

    def get_urls(self) -> list[URLPattern]:
        info = (self.opts.app_label, self.opts.model_name)
        own = [
            path(
                "<path:object_id>/approve/",
                self.admin_site.admin_view(self.decision_view),
                {"decision": Decision.APPROVE},
                name="{}_{}_approve".format(*info),
            ),
            path(
                "<path:object_id>/reject/",
                self.admin_site.admin_view(self.decision_view),
                {"decision": Decision.REJECT},
                name="{}_{}_reject".format(*info),
            ),
        ]
        # Before the defaults: their "<path:object_id>/" would swallow ".../approve/".
        return own + super().get_urls()

    def decision_view(self, request: HttpRequest, object_id: str, decision: str) -> HttpResponse:
        # Looked up among all proposals, not the visible ones: someone who may not decide gets
        # a 403 from the service's verdict, not a 404.
        try:
            proposal = RebalanceProposal.objects.select_related("vault").get(pk=unquote(object_id))
        except (RebalanceProposal.DoesNotExist, ValueError, ValidationError):
            raise Http404("No such proposal.") from None
        if not self.has_view_permission(request):
            raise PermissionDenied
        verb, past, service = DECISIONS[Decision(decision)]
        back = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[proposal.pk])
        if request.method == "POST":
            form = DecisionForm(request.POST)
            comment = form.cleaned_data["comment"] if form.is_valid() else ""
            decided = None
            try:
                with self.domain_errors(request):
                    decided = service(proposal=proposal, approver=request.user, comment=comment)
            except PermissionDenied as exc:  # the service's 403: not an approver, own proposal
                return self.refused_view(request, proposal, verb, str(exc) or "you may not decide on it", back)
            if decided is None:
                return HttpResponseRedirect(back)
            given = decided.approvals.filter(decision=Decision.APPROVE).count()
            outcome = {
                ProposalStatus.APPROVED: " Quorum reached: execution has started.",
                ProposalStatus.REJECTED: " The quorum can no longer be reached: the proposal is rejected.",
            }.get(ProposalStatus(decided.status), "")
            self.message_user(
                request,
                f"You {past} {decided.proposal_id} ({given} of {decided.quorum_required} approvals).{outcome}",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(back)
        # GET: the same rules the service applies, to show a page or not.
        user: Any = request.user
        if proposal.proposer_id == user.pk:
            return self.refused_view(
                request, proposal, verb, f"{proposal.proposal_id} is your own proposal: a proposer never decides", back
            )
        if not proposal.approvers.filter(pk=user.pk).exists():
            return self.refused_view(
                request, proposal, verb, f"you are not a designated approver of {proposal.proposal_id}", back
            )
        if not can_decide(proposal, user):
            self.message_user(
                request, f"{proposal.proposal_id} is {proposal.status} or decided by you already.", messages.WARNING
            )
            return HttpResponseRedirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb} {proposal.proposal_id}?",
            "opts": self.opts,
            "original": proposal,
            "verb": verb,
            "decision": decision,
            "form": DecisionForm(),
            "back_url": back,
            "proposed": [(name, pct_shown(pct)) for name, pct in sorted(proposal.proposed_allocations.items())],
            "quorum_progress": quorum_progress(proposal),
            **self.decision_compliance(proposal),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.decision_template, context)

    def decision_compliance(self, proposal: RebalanceProposal) -> dict[str, Any]:
        """The check the decision rests on, as the proposal page computes it (the policy active
        now, turnover from the allocation on chain now)."""
        active = proposal.vault.policies.filter(status=PolicyStatus.ACTIVE).first()
        title = f"Compliance with the policy active now (v{active.version})" if active else "Compliance"
        try:
            current: dict[str, str] | None = proposal_current_allocation(proposal=proposal)
        except Exception:  # the page renders whatever the chain does
            current = None
        try:
            return {
                "compliance": proposal_compliance_preview(proposal=proposal, current=current or {}),
                "compliance_title": title,
                "compliance_error": "",
                "current_unavailable": current is None,
            }
        except Exception as exc:
            return {
                "compliance": None,
                "compliance_title": title,
                "compliance_error": f"{exc.__class__.__name__}: {exc}"[:300],
                "current_unavailable": current is None,
            }

    def refused_view(
        self, request: HttpRequest, proposal: RebalanceProposal, verb: str, reason: str, back: str
    ) -> TemplateResponse:
        """The admin's page for a decision this user may not make (HTTP 403), saying why."""
        context = {
            **self.admin_site.each_context(request),
            "title": f"You cannot {verb.lower()} {proposal.proposal_id}",
            "opts": self.opts,
            "original": proposal,
            "verb": verb,
            "reason": reason[:1].upper() + reason[1:].rstrip("."),
            "back_url": back,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.refused_template, context, status=403)
