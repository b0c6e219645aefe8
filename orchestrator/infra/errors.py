"""The API's one error shape: {"error": {"code", "message", "fields"?}} (API.md, Conventions).

Every exception that reaches a view, from DRF or from a service, is turned into that body here,
so clients in any language parse exactly one shape."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger("orchestrator.api")


class ApiError(exceptions.APIException):
    """A domain error with a documented code, raised by services and views."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"
    default_detail = "The request cannot be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail=message or self.default_detail, code=code or self.default_code)
        if status_code is not None:
            self.status_code = status_code
        self.error_code = code or self.default_code
        self.fields = fields


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"
    default_detail = "Not found."


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
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: a real 500, logged by Django
    if isinstance(exc, ApiError):
        response.data = error_body(exc.error_code, str(exc.detail), exc.fields)
    elif isinstance(exc, exceptions.ValidationError):
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


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _wants_json(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def json_server_error(request: HttpRequest) -> Any:
    if _wants_json(request):
        return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
    from django.views.defaults import server_error

    return server_error(request)
