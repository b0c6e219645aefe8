"""The API's one error shape: {"error": {"code", "message", "fields"?}} .

Every exception that reaches a view, from DRF or from a service, is turned into that body here,
so clients in any language parse exactly one shape."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger("orchestrator.api")


class DomainError(Exception):
    """A refusal the caller can act on: a stable `code`, the HTTP status it maps to, and a message
    that says what to do. Every app's refusals derive from it; the API's exception handler below
    and the admin's `DomainErrorAdminMixin` (admin_base.py) translate it, nothing else does."""

    code: str = "bad_request"
    http_status: int = 400
    default_message: str = "The request cannot be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        http_status: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or self.default_message)
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.fields = fields

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.default_message


class Conflict(DomainError):
    code = "conflict"
    http_status = status.HTTP_409_CONFLICT


class NotFound(DomainError):
    code = "not_found"
    http_status = status.HTTP_404_NOT_FOUND
    default_message = "Not found."


_CODES = {
    exceptions.NotAuthenticated: ("not_authenticated", "Authentication credentials were not provided."),
    exceptions.AuthenticationFailed: ("not_authenticated", "Invalid or missing API token."),
    exceptions.PermissionDenied: ("permission_denied", "You do not have permission to do this."),
    exceptions.NotFound: ("not_found", "Not found."),
    exceptions.MethodNotAllowed: ("method_not_allowed", ""),
    exceptions.ParseError: ("malformed_json", ""),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", ""),
    exceptions.NotAcceptable: ("not_acceptable", ""),
    exceptions.Throttled: ("throttled", ""),
}


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def _flatten(detail: Any) -> Any:
    """DRF validation details -> plain messages: lists of one become a string."""
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        items = [_flatten(v) for v in detail]
        return items[0] if len(items) == 1 and not isinstance(items[0], dict | list) else items
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        if exc.http_status >= 500:  # not the client's doing (a key that cannot be opened): log it
            logger.error("%s: %s", exc.code, exc.message, exc_info=exc)
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.http_status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: a real 500, logged by Django
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        if not isinstance(fields, dict):
            fields = {"non_field_errors": fields}
        first = next(iter(fields.items()), ("", ""))
        message = f"Invalid request: {first[0]}: {first[1]}" if first[0] else "Invalid request."
        response.data = error_body("invalid", message, fields)
    else:
        code, message = next(
            ((c, m) for cls, (c, m) in _CODES.items() if isinstance(exc, cls)),
            (getattr(exc, "default_code", "error"), ""),
        )
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        response.data = error_body(code, message or str(detail))
    return response


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(("/v1/", "/api/")) or "application/json" in request.headers.get("Accept", "")


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def json_server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
    from django.views.defaults import server_error

    return server_error(request)
