"""POST /v1/feeds: signed feeds from allow-listed oracles are stored once; every refused feed is
stored nowhere; an accepted feed starts Flow A for the vaults that trust its oracle.

Transactional tests: feed_accept starts runs after commit. No worker runs; a started run just
waits on the broker."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from eth_account import Account
from rest_framework.test import APIClient

from orchestrator.engine.models import WorkflowRun
from tests.support.vaults import entry, feed_body, make_oracle, make_policy, make_protocol, make_vault, token_client
from vaults.models import OracleKey, SignedFeed
from vaults.services.feeds import ParsedFeed
from vaults.services.rebalance import REBALANCE_WORKFLOW, rebalances_dispatch

pytestmark = pytest.mark.django_db(transaction=True)

FEEDS = "/v1/feeds"


def now_s() -> datetime:
    return timezone.now().replace(microsecond=0)


def assert_refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert SignedFeed.objects.count() == 0, "a refused feed must be stored nowhere"
    return body["error"]


def post(client: APIClient, body: Any, **headers: str) -> Any:
    return client.post(FEEDS, body, format="json", **headers)


# --- accepted ------------------------------------------------------------------------------------


def test_a_good_feed_is_answered_201_and_stored_once_with_its_digest() -> None:
    oracle, account = make_oracle("Chainlink-ish")
    when = now_s() - timedelta(seconds=5)
    entries = [entry("Aave USDC", "0.051", "1250000", 2), entry("Compound USDC", "0.047", "990000.5", 3)]
    body = feed_body(account, when, entries)

    response = post(token_client(), body)

    assert response.status_code == 201, response.content
    data = response.json()
    assert set(data) == {"id", "oracle", "timestamp", "digest", "rebalances"}
    feed = SignedFeed.objects.get()
    assert data["id"] == str(feed.id)
    assert data["oracle"] == oracle.address
    assert data["digest"] == feed.digest
    assert data["digest"].startswith("0x") and len(data["digest"]) == 66
    assert data["rebalances"] == []
    assert datetime.fromisoformat(data["timestamp"]) == when
    assert feed.oracle == oracle
    assert feed.timestamp == when
    assert feed.entries == entries  # apy and tvl kept as the strings that were signed
    assert feed.signature == body["signature"]
    parsed = ParsedFeed(oracle=oracle.address, timestamp=when, entries=entries, signature=body["signature"])
    assert feed.digest == parsed.digest()


def test_a_feed_dated_within_the_clock_skew_or_just_inside_the_maximum_age_is_accepted() -> None:
    _, account = make_oracle()
    client = token_client()
    assert post(client, feed_body(account, now_s() + timedelta(seconds=15))).status_code == 201
    assert post(client, feed_body(account, now_s() - timedelta(seconds=280))).status_code == 201
    assert SignedFeed.objects.count() == 2


def test_a_feed_naming_its_oracle_in_lowercase_is_accepted_for_the_checksummed_key() -> None:
    oracle, account = make_oracle()
    body = feed_body(account, now_s(), oracle=account.address.lower())
    response = post(token_client(), body)
    assert response.status_code == 201, response.content
    assert response.json()["oracle"] == oracle.address


def test_an_oracle_registered_with_a_lowercase_address_is_recognised() -> None:
    account = Account.create()
    oracle = OracleKey.objects.create(address=account.address.lower(), name="typed by hand")
    response = post(token_client(), feed_body(account, now_s()))
    assert response.status_code == 201, response.content
    assert SignedFeed.objects.get().oracle == oracle


# --- refused: who signed it ------------------------------------------------------------------------


def test_a_feed_from_an_unknown_oracle_is_refused_403_unknown_oracle() -> None:
    make_oracle()
    stranger = Account.create()
    error = assert_refused(post(token_client(), feed_body(stranger, now_s())), 403, "unknown_oracle")
    assert stranger.address in error["message"]


def test_a_feed_from_an_inactive_oracle_is_refused_403_unknown_oracle() -> None:
    _, account = make_oracle(active=False)
    assert_refused(post(token_client(), feed_body(account, now_s())), 403, "unknown_oracle")


def test_a_feed_signed_by_another_key_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s(), signer=Account.create())
    assert_refused(post(token_client(), body), 401, "invalid_signature")


def test_a_feed_signed_by_another_allow_listed_oracle_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle("first")
    _, other = make_oracle("second")
    body = feed_body(account, now_s(), signer=other)
    assert_refused(post(token_client(), body), 401, "invalid_signature")


def test_a_feed_changed_after_signing_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s(), [entry(apy="0.051")])
    body["entries"][0]["apy"] = "0.510"
    assert_refused(post(token_client(), body), 401, "invalid_signature")


def test_a_feed_with_a_later_timestamp_than_it_was_signed_with_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle()
    when = now_s() - timedelta(seconds=60)
    body = feed_body(account, when)
    body["timestamp"] = (when + timedelta(seconds=30)).isoformat()
    assert_refused(post(token_client(), body), 401, "invalid_signature")


@pytest.mark.parametrize("signature", ["0x" + "11" * 65, "0x" + "00" * 65, "0x" + "ff" * 64 + "1b"])
def test_a_well_formed_signature_that_recovers_nothing_is_refused_401_invalid_signature(signature: str) -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    body["signature"] = signature
    assert_refused(post(token_client(), body), 401, "invalid_signature")


# --- refused: when ---------------------------------------------------------------------------------


def test_a_future_dated_feed_is_refused_422_future_feed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s() + timedelta(seconds=120))
    assert_refused(post(token_client(), body), 422, "future_feed")


def test_a_stale_feed_is_refused_422_stale_feed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s() - timedelta(seconds=301))
    assert_refused(post(token_client(), body), 422, "stale_feed")


def test_the_same_feed_twice_is_refused_409_feed_replayed_and_stored_once() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    client = token_client()
    assert post(client, body).status_code == 201
    response = post(client, body)
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "feed_replayed"
    assert SignedFeed.objects.count() == 1


def test_the_same_feed_from_another_client_is_refused_409_feed_replayed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    assert post(token_client("first"), body).status_code == 201
    response = post(token_client("second"), body)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "feed_replayed"
    assert SignedFeed.objects.count() == 1


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
    error = assert_refused(post(token_client(), body), 400, "invalid")
    assert field in error["fields"], error
    assert isinstance(error["fields"][field], str) and error["fields"][field]


def test_a_feed_breaking_several_shape_rules_names_every_field() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    body.update(oracle="nobody", timestamp="2026-01-05 12:00", signature="0x00")
    body["entries"] = [entry("A", risk=300), entry("B", apy="abc")]
    error = assert_refused(post(token_client(), body), 400, "invalid")
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
    assert_refused(post(APIClient(), feed_body(account, now_s())), 401, "not_authenticated")


# --- Idempotency-Key -------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_twice_returns_the_first_201_again_and_stores_one_feed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    client = token_client()
    key = f"feed-{uuid.uuid4()}"
    first = post(client, body, HTTP_IDEMPOTENCY_KEY=key)
    second = post(client, body, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == 201, first.content
    assert second.status_code == 201, second.content
    assert second.json() == first.json()
    assert SignedFeed.objects.count() == 1


def test_the_same_idempotency_key_with_another_body_is_refused_409_idempotency_key_reused() -> None:
    _, account = make_oracle()
    client = token_client()
    key = f"feed-{uuid.uuid4()}"
    assert post(client, feed_body(account, now_s()), HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    other = feed_body(account, now_s() - timedelta(seconds=10), [entry(apy="0.060")])
    response = post(client, other, HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert SignedFeed.objects.count() == 1


def test_a_refused_feed_does_not_use_up_its_idempotency_key() -> None:
    _, account = make_oracle()
    client = token_client()
    key = f"feed-{uuid.uuid4()}"
    stale = feed_body(account, now_s() - timedelta(seconds=600))
    assert_refused(post(client, stale, HTTP_IDEMPOTENCY_KEY=key), 422, "stale_feed")
    response = post(client, feed_body(account, now_s()), HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 201, response.content


def test_one_idempotency_key_used_by_two_clients_is_two_separate_requests() -> None:
    _, account = make_oracle()
    key = f"feed-{uuid.uuid4()}"
    # One clock reading for both feeds: two readings may straddle a second and give the same timestamp.
    now = now_s()
    assert post(token_client("first"), feed_body(account, now), HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    other = feed_body(account, now - timedelta(seconds=1))
    assert post(token_client("second"), other, HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    assert SignedFeed.objects.count() == 2


# --- Flow A ----------------------------------------------------------------------------------------


def rebalance_runs() -> list[WorkflowRun]:
    return list(WorkflowRun.objects.filter(kind=REBALANCE_WORKFLOW).order_by("created_at"))


def test_a_feed_from_a_trusted_oracle_starts_one_rebalance_for_each_auto_rebalancing_vault() -> None:
    oracle, account = make_oracle("trusted")
    other_oracle, _ = make_oracle("other")
    aave = make_protocol("Aave USDC")
    trusting = make_vault("vault-eth-001")
    make_policy(trusting, whitelist=[aave], oracles=[oracle])
    manual = make_vault("vault-eth-002", auto_rebalance=False)
    make_policy(manual, whitelist=[aave], oracles=[oracle])
    distrusting = make_vault("vault-eth-003")
    make_policy(distrusting, whitelist=[aave], oracles=[other_oracle])
    # Trusted the oracle once, but that policy was replaced by one that does not.
    moved_on = make_vault("vault-eth-004")
    make_policy(moved_on, whitelist=[aave], oracles=[oracle])
    make_policy(moved_on, oracles=[other_oracle])

    response = post(token_client(), feed_body(account, now_s(), [entry("Aave USDC")]))

    assert response.status_code == 201, response.content
    feed = SignedFeed.objects.get()
    (run,) = rebalance_runs()
    assert response.json()["rebalances"] == [str(run.id)]
    assert run.input == {"vault": trusting.pk, "feed": str(feed.id)}
    assert run.idempotency_key == f"flow-a:{trusting.pk}:{feed.id}"


def test_a_feed_starts_no_rebalance_when_it_is_refused() -> None:
    oracle, account = make_oracle()
    make_policy(make_vault(), whitelist=[make_protocol("Aave USDC")], oracles=[oracle])
    assert_refused(post(token_client(), feed_body(account, now_s() + timedelta(hours=1))), 422, "future_feed")
    assert rebalance_runs() == []


def stored_feed(oracle: OracleKey, age_seconds: int) -> SignedFeed:
    """A feed row as if accepted earlier (not through the API, so no run was started)."""
    return SignedFeed.objects.create(
        oracle=oracle,
        timestamp=timezone.now() - timedelta(seconds=age_seconds),
        entries=[entry()],
        signature="0x" + "00" * 65,
        digest="0x" + uuid.uuid4().hex * 2,
    )


def test_dispatch_starts_one_run_per_vault_for_its_newest_usable_feed_and_none_the_second_time() -> None:
    oracle, _ = make_oracle("trusted")
    untrusted, _ = make_oracle("untrusted")
    aave = make_protocol("Aave USDC")
    vault = make_vault("vault-eth-001")
    make_policy(vault, whitelist=[aave], oracles=[oracle], max_feed_age_seconds=300)
    impatient = make_vault("vault-eth-002")  # its feeds must be younger than any there is
    make_policy(impatient, whitelist=[aave], oracles=[oracle], max_feed_age_seconds=30)
    manual = make_vault("vault-eth-003", auto_rebalance=False)
    make_policy(manual, whitelist=[aave], oracles=[oracle])
    make_vault("vault-eth-004")  # no policy at all

    stored_feed(oracle, age_seconds=200)
    newest = stored_feed(oracle, age_seconds=100)
    stored_feed(untrusted, age_seconds=10)  # newer, but not from an oracle the policy trusts

    assert rebalances_dispatch() == 1
    (run,) = rebalance_runs()
    assert run.input == {"vault": vault.pk, "feed": str(newest.id)}

    assert rebalances_dispatch() == 0
    assert len(rebalance_runs()) == 1


def test_dispatch_starts_a_new_run_when_a_newer_feed_arrives() -> None:
    oracle, _ = make_oracle()
    vault = make_vault()
    make_policy(vault, whitelist=[make_protocol("Aave USDC")], oracles=[oracle])
    first = stored_feed(oracle, age_seconds=120)
    assert rebalances_dispatch() == 1
    second = stored_feed(oracle, age_seconds=60)
    assert rebalances_dispatch() == 1
    assert rebalances_dispatch() == 0
    assert [r.input["feed"] for r in rebalance_runs()] == [str(first.id), str(second.id)]


def test_dispatch_starts_nothing_for_a_feed_the_arrival_already_started() -> None:
    oracle, account = make_oracle()
    vault = make_vault()
    make_policy(vault, whitelist=[make_protocol("Aave USDC")], oracles=[oracle])
    assert post(token_client(), feed_body(account, now_s())).status_code == 201
    assert len(rebalance_runs()) == 1
    assert rebalances_dispatch() == 0
    assert len(rebalance_runs()) == 1


def test_dispatch_starts_nothing_when_every_feed_is_too_old() -> None:
    oracle, _ = make_oracle()
    vault = make_vault()
    make_policy(vault, whitelist=[make_protocol("Aave USDC")], oracles=[oracle], max_feed_age_seconds=60)
    stored_feed(oracle, age_seconds=61)
    assert rebalances_dispatch() == 0
    assert rebalance_runs() == []
