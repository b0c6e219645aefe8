"""The Safe transactions of Safe vaults in the admin: every nonce at a glance (what it does, its
status, who signed), and the owner changes: *Add* proposes new approvers or a new quorum for a
Safe vault as a Safe transaction, which the current owners sign on its page like a proposal
(approvals/safe_owners.py). A proposal's transactions are signed from the proposal."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from approvals.admin_signing import posted_signature
from approvals.admin_views import is_approver
from approvals.models import RebalanceProposal
from approvals.safe_owners import owner_change_propose, safe_tx_sign
from approvals.safe_proposals import signing_payload
from approvals.selectors import is_operator
from approvals.wallets import dev_wallet_key, wallet_of
from orchestrator.infra.admin_base import DomainErrorAdminMixin
from orchestrator.infra.errors import DomainError
from vaults.models import SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault

SIGN_TEMPLATE = "admin/vaults/safetransaction/signing.html"


class OwnerChangeForm(forms.Form):
    vault = forms.ModelChoiceField(queryset=Vault.objects.exclude(safe_address=""), help_text="A vault held by a Safe.")
    approvers = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.filter(wallet__isnull=False).order_by("username"),
        help_text="The Safe's owners after the change: these users' registered wallets.",
    )
    quorum = forms.IntegerField(min_value=1, help_text="The Safe's threshold after the change.")


@admin.register(SafeTransaction)
class SafeTransactionAdmin(DomainErrorAdminMixin, admin.ModelAdmin):
    list_display = ("vault", "nonce", "purpose", "status", "signed", "summary")
    list_filter = ("status", "purpose", "vault")
    search_fields = ("safe_tx_hash", "proposal_id", "vault__vault_id")
    fields = (
        "vault",
        "nonce",
        "purpose",
        "status",
        "summary",
        "safe_tx_hash",
        "proposal_id",
        "signed",
        "relay",
        "error",
        "created_at",
        "executed_at",
    )
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and (is_operator(request.user) or is_approver(request.user)))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_operator(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="signatures")
    def signed(self, obj: SafeTransaction) -> str:
        return ", ".join(obj.signatures.values_list("owner", flat=True)) or "none yet"

    # --- Add: an owner change ------------------------------------------------------------

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = OwnerChangeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                row = owner_change_propose(
                    vault=form.cleaned_data["vault"],
                    approvers=list(form.cleaned_data["approvers"]),
                    threshold=form.cleaned_data["quorum"],
                    proposer=request.user,
                )
            except DomainError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, f"Proposed at Safe nonce {row.nonce}: the current owners sign it here.")
                return HttpResponseRedirect(reverse("admin:vaults_safetransaction_change", args=[row.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Change a Safe vault's approvers or quorum",
            "opts": self.opts,
            "form": form,
        }
        return TemplateResponse(request, "admin/vaults/safetransaction/owner_change.html", context)

    # --- the page, and signing -----------------------------------------------------------

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None) -> Any:
        row = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if row is not None:
            extra["sign_urls"] = self._sign_urls(row)
            proposal = (
                RebalanceProposal.objects.filter(proposal_id=row.proposal_id).first() if row.proposal_id else None
            )
            if proposal is not None:
                extra["proposal_url"] = reverse("admin:approvals_rebalanceproposal_change", args=[proposal.pk])
        return super().change_view(request, object_id, form_url, extra)

    def _sign_urls(self, row: SafeTransaction) -> list[tuple[str, str]]:
        if row.proposal_id or row.status != SafeTxStatus.SIGNING:
            return []
        rejection = SafeTransaction.objects.filter(rejects=row).first()
        urls = [("Sign to approve", reverse("admin:vaults_safetransaction_sign", args=[row.pk]))]
        if rejection is not None:
            urls.append(("Sign to reject", reverse("admin:vaults_safetransaction_sign", args=[rejection.pk])))
        return urls

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<path:object_id>/sign/", self.admin_site.admin_view(self.sign_view), name="vaults_safetransaction_sign"
            )
        ]
        return own + super().get_urls()

    def sign_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        row = SafeTransaction.objects.select_related("vault__chain").filter(pk=unquote(object_id)).first()
        if row is None or not self.has_view_permission(request, row):
            raise Http404("No such Safe transaction.")
        user: Any = request.user
        back = reverse("admin:vaults_safetransaction_change", args=[row.rejects_id or row.pk])
        if request.method == "POST":
            return self._post(request, row, back)
        payload = signing_payload(row)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Sign Safe nonce {row.nonce} of {row.vault.vault_id}",
            "opts": self.opts,
            "row": row,
            "rejecting": row.purpose == SafeTxPurpose.REJECTION,
            "payload": payload,
            "typed_data_json": json.dumps(payload["typedData"]),
            "wallet": wallet_of(user),
            "dev_wallet": dev_wallet_key(user) is not None and row.vault.chain.counts_as_development,
            "open": row.status == SafeTxStatus.SIGNING,
            "back_url": back,
            "post_url": request.path,
        }
        return TemplateResponse(request, SIGN_TEMPLATE, context)

    def _post(self, request: HttpRequest, row: SafeTransaction, back: str) -> HttpResponse:
        user: Any = request.user
        wants_json = request.content_type == "application/json"
        try:
            signature = posted_signature(request, row)
            safe_tx_sign(row=row, signature=signature, submitted_by=user, from_wallet_of=user)
        except (DomainError, json.JSONDecodeError) as exc:
            message = exc.message if isinstance(exc, DomainError) else "The body is not JSON."
            if wants_json:
                return JsonResponse({"error": message}, status=getattr(exc, "http_status", 400))
            messages.warning(request, f"Nothing recorded: {message}.")
            return HttpResponseRedirect(request.path)
        messages.success(request, f"Your signature of Safe nonce {row.nonce} is recorded.")
        return JsonResponse({"redirect": back}) if wants_json else HttpResponseRedirect(back)
