"""What a client may send, checked once, before anything is stored (docs/api.md, "Bad input").

PostgreSQL refuses some things Python accepts: a NUL character in text or JSON, a lone UTF-16
surrogate, an integer wider than its column; and the JSON renderer refuses a non-finite number
(`1e400` parses to infinity). Python accepts others a client should not rely on: `int("١٢")`
is 12, `Decimal("1_0")` is 10. Everything here refuses them with a 400 `invalid` naming the
field, so a bad body is never half stored, never answered 500, and never remembered by an
Idempotency-Key:

- `StorableJSONParser` (the API's only parser) walks every request body;
- `WholeNumberField` is the API's integer field: ASCII digits only, bounded by its column;
- `AmountField` and `DecimalTextField` (and `whole_number_text`, `decimal_text` outside a
  serializer) check amounts written as strings;
- `RequestTextMiddleware` refuses a NUL in the path or query string, which reach the database
  as lookups."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser

from orchestrator.infra.schema import json_whole_number

# The widest value of each PostgreSQL integer column Django makes.
SMALLINT_MAX = 2**15 - 1  # PositiveSmallIntegerField
INTEGER_MAX = 2**31 - 1  # PositiveIntegerField
BIGINT_MAX = 2**63 - 1  # PositiveBigIntegerField, and OFFSET
UINT256_MAX = 2**256 - 1  # an on-chain amount (wei, base units): 78 digits at most

MAX_JSON_DEPTH = 32
_WHOLE = re.compile(r"[0-9]+")  # not \d: that matches every script's digits
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def text_problem(text: str) -> str | None:
    """Why PostgreSQL (or UTF-8) cannot keep this string, or None if it can."""
    if "\x00" in text:
        return "NUL characters (\\u0000) are not allowed."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "Lone surrogate characters (\\ud800 to \\udfff) are not allowed."
    return None


def json_problems(value: Any, depth: int = 0) -> str | dict[str, Any] | None:
    """Where a parsed JSON value holds something that cannot be stored or rendered: None, a
    message, or the messages by key (`key[i]` for list items), as the error body's `fields`."""
    if depth > MAX_JSON_DEPTH:
        return f"Nested deeper than {MAX_JSON_DEPTH} levels."
    if isinstance(value, float) and not math.isfinite(value):
        return "Numbers must be finite (this one is too large for a 64-bit float)."
    if isinstance(value, str):
        return text_problem(value)
    found: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if (problem := text_problem(key)) is not None:
                return f"A key: {problem}"  # the key itself cannot be echoed back
            if (inner := json_problems(item, depth + 1)) is not None:
                found[key[:100]] = inner
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (inner := json_problems(item, depth + 1)) is not None:
                found[f"[{i}]"] = inner
    return found or None


def _fields(problems: str | dict[str, Any]) -> dict[str, Any]:
    """Nested `fields` as docs/api.md writes them: list items as `entries[0]`."""
    if isinstance(problems, str):
        return {"non_field_errors": problems}
    out: dict[str, Any] = {}
    for key, inner in problems.items():
        if isinstance(inner, dict) and all(k.startswith("[") for k in inner):
            for index, item in inner.items():
                out[f"{key}{index}"] = _fields(item) if isinstance(item, dict) else item
        else:
            out[key] = _fields(inner) if isinstance(inner, dict) else inner
    return out


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects more than `limit` deep, found without
    parsing it: py_ecc (under eth-account) raises the recursion limit to 100,000, so json.loads
    of `[[[[...` runs out of C stack and kills the process instead of raising RecursionError."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, delete=bytes(set(range(256)) - set(b"[]{}")))
    brackets = brackets.replace(b"{", b"[").replace(b"}", b"]")
    for _ in range(limit):  # each pass takes away the innermost level, at C speed
        shorter = brackets.replace(b"[]", b"")
        if not shorter:
            return False
        if len(shorter) == len(brackets):  # unbalanced, "]]][[[" left: the opens nest in each other
            return shorter.count(b"[") > limit
        brackets = shorter
    return True


class StorableJSONParser(JSONParser):
    """JSON bodies that can be stored in PostgreSQL and rendered back: no NUL, no lone
    surrogate, no non-finite number, at most MAX_JSON_DEPTH levels deep."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        if json_too_deep(raw):
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.")
        data = super().parse(io.BytesIO(raw), media_type, parser_context)
        problems = json_problems(data)
        if problems is not None:
            raise ValidationError(_fields(problems))
        return data


class WholeNumberField(serializers.IntegerField):
    """An integer as a JSON number or a string of ASCII digits (query parameters), between
    min_value (default 0) and max_value (default the bigint column's maximum). Refuses `true`,
    `1.5`, `"1.0"`, `" 1"` and other scripts' digits, which DRF's IntegerField accepts; takes the
    number `1.0` as 1, as OpenAPI 3.1 (JSON Schema 2020-12) counts it an integer."""

    default_error_messages = {"invalid": "A whole number (ASCII digits) is required."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if (whole := json_whole_number(data)) is not None:  # 3 or 3.0, never true (OpenAPI 3.1's integer)
            return whole
        if isinstance(data, str) and len(data) <= 100 and re.fullmatch(r"-?[0-9]+", data):
            return int(data)
        self.fail("invalid")
        raise AssertionError("unreachable")  # fail() raises


@extend_schema_field({"type": "string", "pattern": r"^[0-9]{1,78}$"})
class AmountField(serializers.CharField):
    """An on-chain amount (wei, base units) as a string of ASCII digits, at most 2**256 - 1."""

    default_error_messages = {"invalid_amount": "A whole number as a string of ASCII digits, below 2**256."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)  # " 12" is not an amount: the schema says so too
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if whole_number_text(value) is None:
            self.fail("invalid_amount")
        return value


@extend_schema_field({"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "maxLength": 80})
class DecimalTextField(serializers.CharField):
    """A non-negative decimal as a string of ASCII digits (`0.0008`), kept as sent."""

    default_error_messages = {"invalid_decimal": "A decimal as a string of ASCII digits, like 12 or 0.051."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)  # " 12" is not an amount: the schema says so too
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not decimal_text(value):
            self.fail("invalid_decimal")
        return value


def whole_number_text(value: object, *, maximum: int = UINT256_MAX) -> int | None:
    """A non-negative integer written as a string of ASCII digits, at most `maximum`; None
    for anything else."""
    if not isinstance(value, str) or len(value) > 80 or not _WHOLE.fullmatch(value):
        return None
    number = int(value)
    return number if number <= maximum else None


def decimal_text(value: object, *, max_length: int = 80) -> bool:
    """A non-negative decimal written plainly in ASCII digits (`12`, `0.051`): no sign,
    exponent, underscore, space or other script's digits."""
    return isinstance(value, str) and len(value) <= max_length and _DECIMAL.fullmatch(value) is not None


def aware_datetime_text(value: object) -> datetime | None:
    """An RFC 3339 time with a zone, in ASCII; None for anything else."""
    if not isinstance(value, str) or not value.isascii() or len(value) > 64:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well formed but impossible: month 13
        return None
    return parsed if parsed is not None and parsed.tzinfo is not None else None


class RequestTextMiddleware:
    """A NUL in the path or the query string would reach the database in a lookup (a vault id,
    an admin search) and fail there as a 500: refuse it as a 400 first (`handler400`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query or "\x00" in query:
            raise BadRequest("NUL characters are not allowed in the path or the query string.")
        return self.get_response(request)
