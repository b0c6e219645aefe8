"""POST /v1/feeds: signed feeds from allow-listed oracles are stored once; a feed refused for who
signed it or when is stored nowhere; the Idempotency-Key header.

Transactional tests: feed_accept starts runs after commit. No worker runs; a started run just
waits on the broker."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from eth_account import Account

from tests.support.signatures import high_s_twin, recovery_bit, with_v
from tests.support.vaults import (
    assert_refused,
    entry,
    feed_body,
    make_oracle,
    now_s,
    post_feed,
    token_client,
)
from vaults.models import OracleKey, SignedFeed
from vaults.services.feeds import ParsedFeed

pytestmark = pytest.mark.django_db(transaction=True)


# --- accepted ------------------------------------------------------------------------------------


def test_a_good_feed_is_answered_201_and_stored_once_with_its_digest() -> None:
    oracle, account = make_oracle("Chainlink-ish")
    when = now_s() - timedelta(seconds=5)
    entries = [entry("Aave USDC", "0.051", "1250000", 2), entry("Compound USDC", "0.047", "990000.5", 3)]
    body = feed_body(account, when, entries)

    response = post_feed(token_client(), body)

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
    assert post_feed(client, feed_body(account, now_s() + timedelta(seconds=15))).status_code == 201
    assert post_feed(client, feed_body(account, now_s() - timedelta(seconds=280))).status_code == 201
    assert SignedFeed.objects.count() == 2


def test_a_feed_naming_its_oracle_in_lowercase_is_accepted_for_the_checksummed_key() -> None:
    oracle, account = make_oracle()
    body = feed_body(account, now_s(), oracle=account.address.lower())
    response = post_feed(token_client(), body)
    assert response.status_code == 201, response.content
    assert response.json()["oracle"] == oracle.address


def test_an_oracle_registered_with_a_lowercase_address_is_recognised() -> None:
    account = Account.create()
    oracle = OracleKey.objects.create(address=account.address.lower(), name="typed by hand")
    response = post_feed(token_client(), feed_body(account, now_s()))
    assert response.status_code == 201, response.content
    assert SignedFeed.objects.get().oracle == oracle


# --- refused: who signed it ------------------------------------------------------------------------


def test_a_feed_from_an_unknown_oracle_is_refused_403_unknown_oracle() -> None:
    make_oracle()
    stranger = Account.create()
    error = assert_refused(post_feed(token_client(), feed_body(stranger, now_s())), 403, "unknown_oracle")
    assert stranger.address in error["message"]


def test_a_feed_from_an_inactive_oracle_is_refused_403_unknown_oracle() -> None:
    _, account = make_oracle(active=False)
    assert_refused(post_feed(token_client(), feed_body(account, now_s())), 403, "unknown_oracle")


def test_a_feed_signed_by_another_key_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s(), signer=Account.create())
    assert_refused(post_feed(token_client(), body), 401, "invalid_signature")


def test_a_feed_signed_by_another_allow_listed_oracle_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle("first")
    _, other = make_oracle("second")
    body = feed_body(account, now_s(), signer=other)
    assert_refused(post_feed(token_client(), body), 401, "invalid_signature")


def test_a_feed_changed_after_signing_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s(), [entry(apy="0.051")])
    body["entries"][0]["apy"] = "0.510"
    assert_refused(post_feed(token_client(), body), 401, "invalid_signature")


def test_a_feed_with_a_later_timestamp_than_it_was_signed_with_is_refused_401_invalid_signature() -> None:
    _, account = make_oracle()
    when = now_s() - timedelta(seconds=60)
    body = feed_body(account, when)
    body["timestamp"] = (when + timedelta(seconds=30)).isoformat()
    assert_refused(post_feed(token_client(), body), 401, "invalid_signature")


@pytest.mark.parametrize("signature", ["0x" + "11" * 65, "0x" + "00" * 65, "0x" + "ff" * 64 + "1b"])
def test_a_well_formed_signature_that_recovers_nothing_is_refused_401_invalid_signature(signature: str) -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    body["signature"] = signature
    assert_refused(post_feed(token_client(), body), 401, "invalid_signature")


def test_the_high_s_twin_of_a_valid_feed_signature_is_refused_401_invalid_signature() -> None:
    # The twin verifies with eth-account and has another digest nowhere: only the canonical
    # form (low s, EIP-2) is a signature here, so the twin cannot stand in for a fresh feed.
    _, account = make_oracle()
    body = feed_body(account, now_s())
    twin = body | {"signature": high_s_twin(body["signature"])}
    error = assert_refused(post_feed(token_client(), twin), 401, "invalid_signature")
    assert "lower half" in error["message"]
    assert post_feed(token_client(), body).status_code == 201  # the original is still good


@pytest.mark.parametrize("v", [35, 36, 37, 38])
def test_a_feed_signature_with_an_eip_155_v_is_refused_401_invalid_signature(v: int) -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    body["signature"] = with_v(body["signature"], v)
    assert_refused(post_feed(token_client(), body), 401, "invalid_signature")


def test_a_feed_signature_with_v_0_or_1_is_accepted_stored_as_27_or_28_and_is_the_same_feed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    short_v = body | {"signature": with_v(body["signature"], recovery_bit(body["signature"]))}
    client = token_client()
    assert post_feed(client, short_v).status_code == 201
    assert SignedFeed.objects.get().signature == body["signature"].lower()
    replayed = post_feed(client, body)
    assert replayed.status_code == 409 and replayed.json()["error"]["code"] == "feed_replayed"


# --- refused: when ---------------------------------------------------------------------------------


def test_a_future_dated_feed_is_refused_422_future_feed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s() + timedelta(seconds=120))
    assert_refused(post_feed(token_client(), body), 422, "future_feed")


def test_a_stale_feed_is_refused_422_stale_feed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s() - timedelta(seconds=301))
    assert_refused(post_feed(token_client(), body), 422, "stale_feed")


def test_the_same_feed_twice_is_refused_409_feed_replayed_and_stored_once() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    client = token_client()
    assert post_feed(client, body).status_code == 201
    response = post_feed(client, body)
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "feed_replayed"
    assert SignedFeed.objects.count() == 1


def test_the_same_feed_from_another_client_is_refused_409_feed_replayed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    assert post_feed(token_client("first"), body).status_code == 201
    response = post_feed(token_client("second"), body)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "feed_replayed"
    assert SignedFeed.objects.count() == 1


# --- Idempotency-Key -------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_twice_returns_the_first_201_again_and_stores_one_feed() -> None:
    _, account = make_oracle()
    body = feed_body(account, now_s())
    client = token_client()
    key = f"feed-{uuid.uuid4()}"
    first = post_feed(client, body, HTTP_IDEMPOTENCY_KEY=key)
    second = post_feed(client, body, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == 201, first.content
    assert second.status_code == 201, second.content
    assert second.json() == first.json()
    assert SignedFeed.objects.count() == 1


def test_the_same_idempotency_key_with_another_body_is_refused_409_idempotency_key_reused() -> None:
    _, account = make_oracle()
    client = token_client()
    key = f"feed-{uuid.uuid4()}"
    assert post_feed(client, feed_body(account, now_s()), HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    other = feed_body(account, now_s() - timedelta(seconds=10), [entry(apy="0.060")])
    response = post_feed(client, other, HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert SignedFeed.objects.count() == 1


def test_a_refused_feed_does_not_use_up_its_idempotency_key() -> None:
    _, account = make_oracle()
    client = token_client()
    key = f"feed-{uuid.uuid4()}"
    stale = feed_body(account, now_s() - timedelta(seconds=600))
    assert_refused(post_feed(client, stale, HTTP_IDEMPOTENCY_KEY=key), 422, "stale_feed")
    response = post_feed(client, feed_body(account, now_s()), HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 201, response.content


def test_one_idempotency_key_used_by_two_clients_is_two_separate_requests() -> None:
    _, account = make_oracle()
    key = f"feed-{uuid.uuid4()}"
    # One clock reading for both feeds: two readings may straddle a second and give the same timestamp.
    now = now_s()
    assert post_feed(token_client("first"), feed_body(account, now), HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    other = feed_body(account, now - timedelta(seconds=1))
    assert post_feed(token_client("second"), other, HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    assert SignedFeed.objects.count() == 2
