"""The admin's "Your approver wallet" page (Approvals > Approver wallets): the address a staff
user registered, a Connect wallet button that proves a browser wallet (EIP-1193) through the
same challenge and wallet_register as the API, and, on a development chain only, a wallet whose
key this server holds.

The page's script (approvals/static/approvals/wallet.js) asks the wallet for an account, posts
it to `challenge/`, has the wallet personal_sign the message, and posts both to `register/`:
same-origin POSTs with the session and the CSRF token, answered in JSON (the API's error body).
Every user sees and registers only their own wallet; there are no object pages."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Model
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from approvals.models import ApproverWallet
from approvals.wallets import (
    configured_chain,
    dev_wallet_enable,
    dev_wallets_allowed,
    wallet_challenge_issue,
    wallet_get,
    wallet_register,
)
from orchestrator.infra.admin_base import DomainErrorAdminMixin
from orchestrator.infra.errors import DomainError, error_body

PAGE_TEMPLATE = "admin/approvals/wallet.html"


def _json_body(request: HttpRequest, *names: str) -> dict[str, str] | JsonResponse:
    """The named string fields of a JSON body, or the error answer saying what is wrong."""
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return JsonResponse(error_body("malformed_json", "The body is not JSON."), status=400)
    if not isinstance(body, dict):
        return JsonResponse(error_body("invalid", "The body must be a JSON object."), status=400)
    problems = {n: "A string is required." for n in names if not isinstance(body.get(n), str) or "\x00" in body[n]}
    if problems:
        return JsonResponse(error_body("invalid", "Invalid request.", problems), status=400)
    return {n: body[n] for n in names}


def _refused(exc: DomainError) -> JsonResponse:
    return JsonResponse(error_body(exc.code, exc.message, exc.fields), status=exc.http_status)


@admin.register(ApproverWallet)
class ApproverWalletAdmin(DomainErrorAdminMixin, admin.ModelAdmin):
    """Listed in the admin index for every staff user; its only pages are the user's own."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return obj is None and self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        info = (self.opts.app_label, self.opts.model_name)
        wrap = self.admin_site.admin_view
        # Only these: no list of everyone's wallets, no object pages.
        return [
            path("", wrap(self.wallet_view), name="{}_{}_changelist".format(*info)),
            path("challenge/", wrap(require_POST(self.challenge_view)), name="{}_{}_challenge".format(*info)),
            path("register/", wrap(require_POST(self.register_view)), name="{}_{}_register".format(*info)),
            path("development/", wrap(require_POST(self.development_view)), name="{}_{}_development".format(*info)),
        ]

    def _url(self, name: str) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}")

    def wallet_view(self, request: HttpRequest) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Your approver wallet",
            "opts": self.opts,
            "wallet": wallet_get(request.user),
            "development_allowed": dev_wallets_allowed(),
            "challenge_url": self._url("challenge"),
            "register_url": self._url("register"),
            "development_url": self._url("development"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, PAGE_TEMPLATE, context)

    def challenge_view(self, request: HttpRequest) -> HttpResponse:
        body = _json_body(request, "address")
        if isinstance(body, JsonResponse):
            return body
        try:
            challenge = wallet_challenge_issue(
                user=request.user,
                address=body["address"],
                domain=request.get_host(),
                uri=request.build_absolute_uri("/"),
                chain_id=settings.CHAIN_ID,
            )
        except DomainError as exc:
            return _refused(exc)
        return JsonResponse({"message": challenge.message, "nonce": challenge.nonce}, status=201)

    def register_view(self, request: HttpRequest) -> HttpResponse:
        body = _json_body(request, "message", "signature")
        if isinstance(body, JsonResponse):
            return body
        try:
            wallet = wallet_register(user=request.user, message=body["message"], signature=body["signature"])
        except DomainError as exc:
            return _refused(exc)
        return JsonResponse({"address": wallet.address, "development": wallet.development}, status=201)

    def development_view(self, request: HttpRequest) -> HttpResponse:
        chain = configured_chain()
        if chain is None:
            messages.error(request, f"Chain {settings.CHAIN_ID} is not set up here: run `manage.py chain seed`.")
        else:
            with self.domain_errors(request):
                wallet = dev_wallet_enable(user=request.user, chain=chain)
                messages.success(request, f"Your approver wallet is {wallet.address}, a development wallet.")
        return HttpResponseRedirect(self._url("changelist"))
