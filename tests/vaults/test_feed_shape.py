"""POST /v1/feeds: a malformed body is refused 400 naming each field at fault, and stored nowhere.

Transactional tests: feed_accept starts runs after commit. No worker runs; a started run just
waits on the broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.vaults import (
    FEEDS,
    assert_refused,
    entry,
    feed_body,
    make_oracle,
    now_s,
    post_feed,
    token_client,
)

pytestmark = pytest.mark.django_db(transaction=True)


# --- refused: malformed ----------------------------------------------------------------------------


def without(key: str) -> Callable[[dict[str, Any]], Any]:
    def change(body: dict[str, Any]) -> Any:
        del body[key]
        return body

    return change


def setting(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(body: dict[str, Any]) -> Any:
        body[key] = value
        return body

    return change


def first_entry(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(body: dict[str, Any]) -> Any:
        body["entries"][0][key] = value
        return body

    return change


def duplicate_protocol(body: dict[str, Any]) -> Any:
    body["entries"] = [entry("Aave USDC", "0.05"), entry("Aave USDC", "0.06")]
    return body


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("missing oracle", without("oracle"), "oracle"),
    ("oracle not an address", setting("oracle", "0x1234"), "oracle"),
    ("missing timestamp", without("timestamp"), "timestamp"),
    ("timestamp without a zone", setting("timestamp", "2026-01-05T12:00:00"), "timestamp"),
    ("timestamp not a time", setting("timestamp", "yesterday"), "timestamp"),
    ("timestamp as a number", setting("timestamp", 1767614400), "timestamp"),
    ("empty entries", setting("entries", []), "entries"),
    ("entries not a list", setting("entries", {"protocol": "Aave USDC"}), "entries"),
    ("too many entries", setting("entries", [entry(f"P{i}") for i in range(101)]), "entries"),
    ("risk 300", first_entry("risk", 300), "entries[0]"),
    ("negative risk", first_entry("risk", -1), "entries[0]"),
    ("risk as a string", first_entry("risk", "2"), "entries[0]"),
    ("risk as a boolean", first_entry("risk", True), "entries[0]"),
    ('apy "abc"', first_entry("apy", "abc"), "entries[0]"),
    ("apy as a number", first_entry("apy", 0.05), "entries[0]"),
    ('apy "NaN"', first_entry("apy", "NaN"), "entries[0]"),
    ("negative tvl", first_entry("tvl", "-1"), "entries[0]"),
    ('tvl "Infinity"', first_entry("tvl", "Infinity"), "entries[0]"),
    ("apy in Arabic-Indic digits", first_entry("apy", "\u0660.\u0660\u0665"), "entries[0]"),
    ('apy "5e-2"', first_entry("apy", "5e-2"), "entries[0]"),
    ('tvl "1_000"', first_entry("tvl", "1_000"), "entries[0]"),
    ("timestamp in Arabic-Indic digits", setting("timestamp", "\u0662\u0660\u0662\u0666-01-05T12:00:00Z"), "timestamp"),
    ("timestamp on February 30", setting("timestamp", "2026-02-30T12:00:00Z"), "timestamp"),
    ("empty protocol name", first_entry("protocol", "  "), "entries[0]"),
    ("entry not an object", setting("entries", ["Aave USDC"]), "entries[0]"),
    ("duplicate protocol", duplicate_protocol, "entries"),
    ("missing signature", without("signature"), "signature"),
    ("signature not hex", setting("signature", "0x" + "zz" * 65), "signature"),
    ("signature without 0x", lambda b: setting("signature", b["signature"][2:] + "00")(b), "signature"),
    ("signature too short", setting("signature", "0x1234"), "signature"),
]


@pytest.mark.parametrize(("change", "field"), [(c, f) for _, c, f in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_a_malformed_feed_is_refused_400_invalid_naming_the_field(
    change: Callable[[dict[str, Any]], Any], field: str
) -> None:
    _, account = make_oracle()
    body = change(feed_body(account, now_s()))
    error = assert_refused(post_feed(token_client(), body), 400, "invalid")
    assert field in error["fields"], error
    assert isinstance(error["fields"][field], str) and error["fields"][field]


def test_a_feed_breaking_several_shape_rules_names_every_field() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    body.update(oracle="nobody", timestamp="2026-01-05 12:00", signature="0x00")
    body["entries"] = [entry("A", risk=300), entry("B", apy="abc")]
    error = assert_refused(post_feed(token_client(), body), 400, "invalid")
    assert set(error["fields"]) == {"oracle", "timestamp", "signature", "entries[0]", "entries[1]"}


@pytest.mark.parametrize("body", ["[]", '["a feed"]', '"a feed"', "42", "null", "true"])
def test_a_body_that_is_not_a_json_object_is_refused_400_invalid(body: str) -> None:
    make_oracle()
    response = token_client().post(FEEDS, body, content_type="application/json")
    error = assert_refused(response, 400, "invalid")
    assert error["message"] == "The body must be a JSON object."


def test_a_body_that_is_not_json_is_refused_400_malformed_json() -> None:
    response = token_client().post(FEEDS, "{not json", content_type="application/json")
    assert_refused(response, 400, "malformed_json")


def test_a_feed_without_a_token_is_refused_401_and_not_stored() -> None:
    _, account = make_oracle()
    assert_refused(post_feed(APIClient(), feed_body(account, now_s())), 401, "not_authenticated")
