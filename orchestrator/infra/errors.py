"""The API's one error shape: {"error": {"code", "message", "fields"?}} .

Every exception that reaches a view, from DRF or from a service, is turned into that body here,
so clients in any language parse exactly one shape."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import BadRequest, DisallowedHost, PermissionDenied, RequestDataTooBig, TooManyFieldsSent
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


def _request_refusal(exception: Exception | None) -> tuple[int, str, str]:
    """Status, code and message for what Django refuses before (or instead of) a view."""
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return 413, "request_too_large", f"The request body is larger than {limit} bytes."
    if isinstance(exception, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return 400, "too_many_parameters", f"More than {limit} query or form parameters."
    if isinstance(exception, DisallowedHost):
        return 400, "disallowed_host", "The Host header names a host this server does not answer for."
    # Only our own BadRequest's message is meant for the client; Django's may quote internals.
    return (
        400,
        "bad_request",
        str(exception) if isinstance(exception, BadRequest) and str(exception) else "Bad request.",
    )


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400: every SuspiciousOperation and BadRequest, raised by Django itself (an
    unknown Host, too many parameters, a body over DATA_UPLOAD_MAX_MEMORY_SIZE, which is 413)
    or by RequestTextMiddleware."""
    status_code, code, message = _request_refusal(exception)
    if _wants_json(request):
        return JsonResponse(error_body(code, message), status=status_code)
    from django.views.defaults import bad_request

    response = bad_request(request, exception or BadRequest())
    response.status_code = status_code
    return response


def json_permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403 (a PermissionDenied outside DRF, such as a CSRF failure)."""
    if _wants_json(request):
        return JsonResponse(error_body("permission_denied", "You do not have permission to do this."), status=403)
    from django.views.defaults import permission_denied

    return permission_denied(request, exception or PermissionDenied())


def json_server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
    from django.views.defaults import server_error

    return server_error(request)
