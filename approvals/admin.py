"""The approvers' screen: proposals waiting for me, a proposal's current and proposed allocation
with its compliance check, who decided, and Approve/Reject behind a confirmation page.

Approvers land on "waiting for my decision": the bare changelist URL redirects to
`?waiting=me` for a member of "Approvers" (or anyone designated on a proposal); the filter's
"All" choice is `?waiting=all`, so it never bounces back. Operators propose through the add
form. Nobody edits or deletes a proposal or a decision here: decisions go through
proposal_approve / proposal_reject, which are the authority on who may decide."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from approvals.forms import DecisionForm, ProposalAddForm
from approvals.models import Approval, Decision, ProposalStatus, RebalanceProposal
from approvals.selectors import APPROVERS_GROUP, is_operator, proposals_visible_to, proposals_waiting_for
from approvals.services import (
    AlreadyDecided,
    NotAnApprover,
    ProposalClosed,
    ProposalInvalid,
    proposal_approve,
    proposal_compliance_preview,
    proposal_current_allocation,
    proposal_reject,
)
from orchestrator.infra.admin_base import ReadOnlyAdmin
from relayer.models import RelayTransaction
from vaults.models import ExecutionIntent, PolicyStatus, Protocol
from vaults.services.compliance import ComplianceResult, Violation

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices

DECISIONS = {
    Decision.APPROVE: ("Approve", "approved", proposal_approve),
    Decision.REJECT: ("Reject", "rejected", proposal_reject),
}


class WaitingForMeFilter(admin.SimpleListFilter):
    title = "waiting for my decision"
    parameter_name = "waiting"
    ME, ALL = "me", "all"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(self.ME, "Waiting for my decision")]

    def choices(self, changelist: Any) -> Iterator[_ListFilterChoices]:
        choices = super().choices(changelist)
        # Django's "All" drops the parameter, and the bare list redirects an approver back to
        # ?waiting=me: here "All" is an explicit value.
        next(choices)
        yield {
            "selected": self.value() in (None, self.ALL),
            "query_string": changelist.get_query_string({self.parameter_name: self.ALL}),
            "display": "All",
        }
        yield from choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == self.ME:
            return queryset.filter(pk__in=proposals_waiting_for(user=request.user).values("pk"))
        return queryset


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


def _pct(value: Any) -> str:
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
            "current": _pct(current.get(name, "0")) if current is not None else "unavailable",
            "proposed": _pct(proposed.get(name, "0")),
        }
        for name in names
    ]
    rows.append(
        {
            "protocol": "idle",
            "current": _pct(current.get("idle", "0")) if current is not None else "unavailable",
            "proposed": _pct(Decimal(100) - proposed_total),
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


@admin.register(RebalanceProposal)
class RebalanceProposalAdmin(admin.ModelAdmin):
    list_display = ("proposal_id", "vault", "status", "quorum_progress", "expires_at", "created_at")
    list_display_links = ("proposal_id",)
    list_filter = (WaitingForMeFilter, "status", ("vault", admin.RelatedOnlyFieldListFilter))
    search_fields = ("proposal_id", "vault__vault_id")
    fields = (
        "proposal_id",
        "vault",
        "status",
        "source",
        "proposer_name",
        "quorum_required",
        "policy_version",
        "feed_shown",
        "expires_at",
        "created_at",
        "decided_at",
        "execution_error",
    )
    readonly_fields = fields
    add_form_template = "admin/approvals/rebalanceproposal/add_form.html"
    decision_template = "admin/approvals/rebalanceproposal/decision_confirmation.html"

    # --- permissions: view for Approvers and Operators, add for Operators, nothing else ---

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and is_operator(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[RebalanceProposal]:
        return proposals_visible_to(user=request.user).annotate(
            approvals_given=Count("approvals", filter=Q(approvals__decision=Decision.APPROVE), distinct=True)
        )

    # Plain text, not the admin's links: an approver may not open users, policies or feeds.
    @admin.display(description="proposer")
    def proposer_name(self, obj: RebalanceProposal) -> str:
        return obj.proposer.get_username() if obj.proposer else "-"

    @admin.display(description="policy")
    def policy_version(self, obj: RebalanceProposal) -> str:
        return f"v{obj.policy.version} (now {obj.policy.status})"

    @admin.display(description="feed")
    def feed_shown(self, obj: RebalanceProposal) -> str:
        return str(obj.feed) if obj.feed else "the newest from a trusted oracle"

    @admin.display(description="quorum")
    def quorum_progress(self, obj: RebalanceProposal) -> str:
        given = getattr(obj, "approvals_given", None)
        if given is None:
            given = obj.approvals.filter(decision=Decision.APPROVE).count()
        return f"{given} of {obj.quorum_required}"

    # --- the list: approvers start on what waits for them --------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not request.GET and is_approver(request.user):
            return HttpResponseRedirect(f"{request.path}?{WaitingForMeFilter.parameter_name}={WaitingForMeFilter.ME}")
        return super().changelist_view(request, extra_context)

    # --- the proposal page ---------------------------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        proposal = self.get_object(request, unquote(object_id))
        if proposal is not None and self.has_view_permission(request, proposal):
            extra_context = {**(extra_context or {}), **self.review_context(request, proposal)}
        return super().change_view(request, object_id, form_url, extra_context)

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
        transactions = (
            sorted(
                RelayTransaction.objects.filter(requested_by_kind="intent", requested_by_id=str(intent.id)),
                key=lambda tx: int(tx.idempotency_key.rsplit(":", 1)[-1]),
            )
            if intent is not None
            else []
        )
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
            try:
                decided = service(proposal=proposal, approver=request.user, comment=comment)
            except (NotAnApprover, ProposalInvalid) as exc:
                raise PermissionDenied(str(exc)) from exc
            except (AlreadyDecided, ProposalClosed) as exc:
                self.message_user(request, f"Nothing recorded: {exc}.", messages.WARNING)
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
        if proposal.proposer_id == user.pk or not proposal.approvers.filter(pk=user.pk).exists():
            raise PermissionDenied
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
            "proposed": [(name, _pct(pct)) for name, pct in sorted(proposal.proposed_allocations.items())],
            "quorum_progress": self.quorum_progress(proposal),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.decision_template, context)

    # --- Operators propose ---------------------------------------------------------------

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ProposalAddForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                proposal = form.proposal_create(proposer=request.user)
            except ProposalInvalid as exc:
                form.add_error(None, str(exc))
            else:
                self.log_addition(request, proposal, [{"added": {}}])
                self.message_user(
                    request,
                    f"{proposal.proposal_id} waits for {proposal.quorum_required} of "
                    f"{proposal.approvers.count()} approvers.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(
                    reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[proposal.pk])
                )
        plain_form: Any = form  # AdminForm renders any form; its stubs ask for a ModelForm
        adminform = helpers.AdminForm(
            plain_form, [(None, {"fields": ["vault", "approvers", "quorum", "allocation"]})], {}, model_admin=self
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Propose a rebalance",
            "subtitle": None,
            "adminform": adminform,
            "object_id": None,
            "original": None,
            "is_popup": False,
            "to_field": None,
            "media": self.media + adminform.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(plain_form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "protocols": sorted(set(Protocol.objects.values_list("name", flat=True))),
            **(extra_context or {}),
        }
        return self.render_change_form(request, context, add=True, form_url=form_url)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    """Decisions are made on the proposal page; here they are only listed."""

    list_display = ("proposal", "approver_name", "decision", "short_comment", "decided_at")
    list_filter = ("decision",)
    search_fields = ("proposal__proposal_id", "approver__username")
    fields = ("proposal", "approver_name", "decision", "comment", "decided_at")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Approval]:
        visible = proposals_visible_to(user=request.user).values("pk")
        return super().get_queryset(request).filter(proposal__in=visible).select_related("proposal", "approver")

    @admin.display(description="approver", ordering="approver__username")
    def approver_name(self, obj: Approval) -> str:
        return obj.approver.get_username()

    @admin.display(description="comment")
    def short_comment(self, obj: Approval) -> str:
        return obj.comment[:80]
