"""Approving a Safe vault's proposal in the admin: a page that shows what will be signed (the
Safe transaction's calls decoded, the resulting allocation, the compliance result, the hash),
then asks the browser's wallet to sign the SafeTx typed data (EIP-1193 `eth_signTypedData_v4`,
approvals/static/approvals/wallet.js) and posts the signature here. On a development chain a
user with a development wallet can have the server sign with it instead.

The POST goes to proposal_sign, the authority on what counts: the signature must recover to
the user's registered wallet, an owner of the Safe now, over this proposal's hash."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from approvals.models import Decision, ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs, proposal_sign, signing_payload
from approvals.services import proposal_compliance_preview, proposal_current_allocation
from approvals.wallets import dev_wallet_key, wallet_of
from orchestrator.infra.errors import DomainError
from relayer.keys import key_manager
from vaults.models import SafeTransaction

SIGN_TEMPLATE = "admin/approvals/rebalanceproposal/safe_signing.html"


class SafeSigningAdminMixin:
    """Adds `<id>/sign/approve/` and `<id>/sign/reject/` to the proposals' admin."""

    admin_site: Any
    opts: Any

    def signing_urls(self) -> list[URLPattern]:
        info = (self.opts.app_label, self.opts.model_name)
        return [
            path(
                f"<path:object_id>/sign/{decision}/",
                self.admin_site.admin_view(self.signing_view),
                {"decision": decision},
                name="{}_{}_sign_{}".format(*info, decision),
            )
            for decision in Decision.values
        ]

    def _proposal(self, object_id: str) -> RebalanceProposal:
        try:
            return RebalanceProposal.objects.select_related("vault__chain", "proposer").get(pk=unquote(object_id))
        except (RebalanceProposal.DoesNotExist, ValueError, ValidationError):
            raise Http404("No such proposal.") from None

    def signing_view(self, request: HttpRequest, object_id: str, decision: str) -> HttpResponse:
        proposal = self._proposal(object_id)
        main, rejection = proposal_safe_txs(proposal)
        back = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[proposal.pk])
        if main is None or rejection is None:
            return HttpResponseRedirect(back)
        row = main if decision == Decision.APPROVE else rejection
        if request.method == "POST":
            return self._post(request, proposal, row, decision, back)
        user: Any = request.user
        current: dict[str, str] | None
        try:
            current = proposal_current_allocation(proposal=proposal)
        except Exception:  # the page renders whatever the chain does
            current = None
        compliance = proposal_compliance_preview(proposal=proposal, current=current or {})
        payload = signing_payload(row)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Sign to {decision} {proposal.proposal_id}",
            "opts": self.opts,
            "original": proposal,
            "decision": decision,
            "row": row,
            "main": main,
            "payload": payload,
            "typed_data_json": json.dumps(payload["typedData"]),
            "actions": main.plan.get("actions", []),
            "proposed": sorted(proposal.proposed_allocations.items()),
            "current": current,
            "compliance": compliance,
            "wallet": wallet_of(user),
            "dev_wallet": dev_wallet_key(user) is not None and proposal.vault.chain.counts_as_development,
            "open": proposal.status == ProposalStatus.PENDING,
            "back_url": back,
            "post_url": request.path,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, SIGN_TEMPLATE, context)

    def _post(
        self, request: HttpRequest, proposal: RebalanceProposal, row: Any, decision: str, back: str
    ) -> HttpResponse:
        user: Any = request.user
        wants_json = request.content_type == "application/json"
        try:
            signature = posted_signature(request, row)
            decided = proposal_sign(
                proposal=proposal, signature=signature, decision=decision, submitted_by=user, from_wallet_of=user
            )
        except (DomainError, json.JSONDecodeError) as exc:
            message = exc.message if isinstance(exc, DomainError) else "The body is not JSON."
            if wants_json:
                return JsonResponse({"error": message}, status=getattr(exc, "http_status", 400))
            messages.warning(request, f"Nothing recorded: {message}.")
            return HttpResponseRedirect(request.path)
        outcome = {
            ProposalStatus.APPROVED: " Quorum reached: execTransaction is being sent.",
            ProposalStatus.REJECTED: " Quorum reached for the rejection: it is being sent, and the proposal can "
            "never execute.",
        }.get(ProposalStatus(decided.status), "")
        messages.success(request, f"Your signature to {decision} {decided.proposal_id} is recorded.{outcome}")
        if wants_json:
            return JsonResponse({"redirect": back})
        return HttpResponseRedirect(back)


def posted_signature(request: HttpRequest, row: SafeTransaction) -> str:
    """The signature a signing page posted: from the browser's wallet (JSON `signature`, or a form
    field), or made here with the user's development wallet on a development chain. Raises
    DomainError, json.JSONDecodeError."""
    if request.POST.get("dev_wallet"):
        key = dev_wallet_key(request.user)
        if key is None or not row.vault.chain.counts_as_development:
            raise DomainError("Development wallets sign only on a development chain.", code="not_development")
        typed = signing_payload(row)["typedData"]
        types = {k: v for k, v in typed["types"].items() if k != "EIP712Domain"}
        return key_manager().sign_typed_data(key=key, domain=typed["domain"], types=types, message=typed["message"])
    if request.content_type == "application/json":
        return str(json.loads(request.body or b"{}").get("signature", ""))
    return request.POST.get("signature", "")
