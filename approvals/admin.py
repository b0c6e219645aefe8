"""The approvers' screen: proposals waiting for me, a proposal's current and proposed allocation
with its compliance check, who decided, and Approve/Reject behind a confirmation page.

Approvers land on "waiting for my decision": the bare changelist URL redirects to
`?waiting=me` for a member of "Approvers" (or anyone designated on a proposal); the filter's
"All" choice is `?waiting=all`, so it never bounces back. Operators propose through the add
form. Nobody edits or deletes a proposal or a decision here: decisions go through
proposal_approve / proposal_reject, which are the authority on who may decide."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, reverse

from approvals import admin_safe_txs, admin_wallet  # noqa: F401  (register "Safe transactions", "Your approver wallet")
from approvals.admin_signing import SafeSigningAdminMixin
from approvals.admin_views import ProposalPagesAdmin, is_approver, quorum_progress
from approvals.forms import ProposalAddForm
from approvals.models import Approval, Decision, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs
from approvals.selectors import is_operator, proposals_visible_to, proposals_waiting_for
from orchestrator.infra.admin_base import ReadOnlyAdmin
from vaults.models import Protocol

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices


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


@admin.register(RebalanceProposal)
class RebalanceProposalAdmin(SafeSigningAdminMixin, ProposalPagesAdmin):
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
        "safe_shown",
    )
    readonly_fields = fields
    add_form_template = "admin/approvals/rebalanceproposal/add_form.html"

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
        return quorum_progress(obj)

    @admin.display(description="Safe transaction")
    def safe_shown(self, obj: RebalanceProposal) -> str:
        main, rejection = proposal_safe_txs(obj)
        if main is None or rejection is None:
            return "none: the vault's account key holds the funds"
        return (
            f"Safe {obj.vault.safe_address}, nonce {main.nonce}, safeTxHash {main.safe_tx_hash} "
            f"({main.get_status_display().lower()}): {main.signatures.count()} owner signature(s) to approve, "
            f"{rejection.signatures.count()} to reject ({rejection.get_status_display().lower()}); "
            f"the Safe executes at {obj.quorum_required}"
        )

    # --- Safe vaults: Approve and Reject are signatures (approvals/admin_signing.py) -------

    def get_urls(self) -> list[URLPattern]:
        return self.signing_urls() + super().get_urls()

    def review_context(self, request: HttpRequest, proposal: RebalanceProposal) -> dict[str, Any]:
        context = super().review_context(request, proposal)
        if proposal_safe_txs(proposal)[0] is not None:
            info = (self.opts.app_label, self.opts.model_name)
            context["approve_url"] = reverse("admin:{}_{}_sign_approve".format(*info), args=[proposal.pk])
            context["reject_url"] = reverse("admin:{}_{}_sign_reject".format(*info), args=[proposal.pk])
        return context

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

    # --- Operators propose ---------------------------------------------------------------

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ProposalAddForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            proposal = None
            with self.domain_errors(request, form=form):
                proposal = form.proposal_create(proposer=request.user)
            if proposal is not None:
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
