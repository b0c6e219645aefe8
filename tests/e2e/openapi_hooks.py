"""Schemathesis hooks for tests/e2e/test_openapi_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

One rule of the API is beyond JSON Schema: no string anywhere in a body, key or value, may hold
a NUL character, which PostgreSQL cannot store (orchestrator/infra/validation.py refuses it, 400
`invalid`). The schema says so in its description; a free-form object such as `metadata` cannot
say it in its own schema, so generated bodies that break it are dropped here."""

from __future__ import annotations

from typing import Any

import schemathesis


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    return not _has_nul(body)
