"""The OpenAPI schema's shared parts: the one error body (errors.py's `error_body`) as a
serializer, the standard error answers every operation documents with it, the
`Idempotency-Key` header, and the string patterns the request serializers declare.

The schema at /api/schema/ has to be true, not only readable: tests/e2e/test_openapi_fuzz.py
sends what it calls valid and invalid to the live app and fails on any answer it does not
document. So the views list every status they can answer, through `api_responses` here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema_field
from rest_framework import serializers

# JSON Schema patterns (ECMA-262) for the strings the serializers check.
ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"  # any case in: the server checksums (docs/api.md, "Bodies")
SIGNATURE_PATTERN = r"^0x[0-9a-fA-F]{130}$"
WHOLE_NUMBER_PATTERN = r"^[0-9]+$"
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
# A DRF CharField trims whitespace, then refuses "" and NUL: some visible character, no NUL.
TEXT_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
NO_NUL_PATTERN = r"^[^\u0000]*$"


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": True,
        "description": "Per-field messages: a field name maps to a message, a list of messages, or "
        "(for a nested object) a map of its own; non_field_errors for the rest.",
    }
)
class _ErrorFields(serializers.DictField):
    pass


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable snake_case code, e.g. invalid, not_found, signature_replayed.")
    message = serializers.CharField(help_text="A sentence for people; do not parse it.")
    fields = _ErrorFields(required=False)  # type: ignore[assignment]  # a declared field, not .fields


class ErrorSerializer(serializers.Serializer):
    """{"error": {"code", "message", "fields"?}}: every 4xx and 5xx of the API."""

    error = ErrorDetailSerializer()


# What each status means everywhere; an operation adds its own codes (`codes=`).
STANDARD_CODES: Mapping[int, str] = {
    400: "`invalid` (a field is missing or malformed; `fields` says which), `malformed_json`, `bad_request`",
    401: "`not_authenticated` (no token, or a wrong one)",
    403: "`permission_denied`",
    404: "`not_found`: no such object, or another client's",
    406: "`not_acceptable`: the Accept header rules out JSON",
    409: "",
    413: "`request_too_large`: the body is larger than the server accepts",
    415: "`unsupported_media_type`: the body is not application/json",
    422: "",
}
_IDEMPOTENT_CODES: Mapping[int, str] = {
    400: "`invalid_idempotency_key` (empty, or longer than 255 characters)",
    409: "`idempotency_key_reused` (the same key with a different request)",
}

_VISIBLE = r"[!-~\u00a1-\u00ac\u00ae-\u00ff]"
_PRINTABLE = r"[ -~\u00a1-\u00ac\u00ae-\u00ff]"
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    # Printable characters (a header is Latin-1); header values lose their outer whitespace on
    # the wire, so the key starts and ends with a visible one.
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": rf"^{_VISIBLE}({_PRINTABLE}{{0,253}}{_VISIBLE})?$"},
    OpenApiParameter.HEADER,
    required=False,
    description="1 to 255 characters. The same key with the same request returns the first answer "
    "again and creates nothing; with a different request, 409 idempotency_key_reused.",
)


def api_responses(
    success: Mapping[int, Any],
    *,
    errors: Iterable[int] = (),
    body: bool = False,
    idempotent: bool = False,
    codes: Mapping[int, str] | None = None,
) -> dict[int, Any]:
    """The `responses` of one operation: its successful answers, then every error status it can
    answer, each with the error body. Every operation can answer 401 and 406; one that reads a
    body also 400, 413 and 415; one that takes an Idempotency-Key also 400 and 409."""
    statuses = {401, 406, *errors}
    if body:
        statuses |= {400, 413, 415}
    if idempotent:
        statuses |= {400, 409}
    answers: dict[int, Any] = dict(success)
    for status in sorted(statuses):
        parts = [STANDARD_CODES.get(status, "")]
        if idempotent:
            parts.append(_IDEMPOTENT_CODES.get(status, ""))
        parts.append((codes or {}).get(status, ""))
        description = "; ".join(p for p in parts if p) or "See error.code."
        answers[status] = OpenApiResponse(ErrorSerializer, description=description)
    return answers


@extend_schema_field({"type": "string", "pattern": TEXT_PATTERN})
class TextField(serializers.CharField):
    """A CharField (trimmed, not blank, no NUL) whose schema says so: without the pattern the
    schema would call "" and "  " valid, and the server refuses both. Only a JSON string is
    text: DRF's CharField would also take 0 or 1.5 and store "0" or "1.5"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


def uuid_path(name: str) -> OpenApiParameter:
    """A path id that is a UUID (anything else is 404, as an unknown one is)."""
    return OpenApiParameter(name, OpenApiTypes.UUID, OpenApiParameter.PATH)


def text_path(name: str) -> OpenApiParameter:
    """A path id that is a name, like vault-eth-001 (a NUL in a path is refused, 400)."""
    return OpenApiParameter(name, {"type": "string", "pattern": NO_NUL_PATTERN}, OpenApiParameter.PATH)


def json_whole_number(value: object) -> int | None:
    """A JSON integer as Python reads it: an int, or a float with no fraction (`3.0`), which JSON
    Schema 2020-12 (OpenAPI 3.1) counts an integer and a JavaScript client cannot tell from `3`;
    None for anything else (a bool, a fraction, a float too large to be exact)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return None
