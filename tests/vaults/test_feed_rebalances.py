"""An accepted feed starts Flow A for the vaults that trust its oracle; beat starts one run per
vault for its newest usable feed.

Transactional tests: feed_accept starts runs after commit. No worker runs; a started run just
waits on the broker."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.engine.models import WorkflowRun
from tests.support.vaults import (
    assert_refused,
    entry,
    feed_body,
    make_oracle,
    make_policy,
    make_protocol,
    make_vault,
    now_s,
    post_feed,
    token_client,
)
from vaults.models import OracleKey, SignedFeed
from vaults.services.rebalance import REBALANCE_WORKFLOW, rebalances_dispatch

pytestmark = pytest.mark.django_db(transaction=True)


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

    granted = [trusting, manual, distrusting, moved_on]
    response = post_feed(token_client(vaults=granted), feed_body(account, now_s(), [entry("Aave USDC")]))

    assert response.status_code == 201, response.content
    feed = SignedFeed.objects.get()
    (run,) = rebalance_runs()
    assert response.json()["rebalances"] == [str(run.id)]
    assert run.input == {"vault": trusting.pk, "feed": str(feed.id)}
    assert run.idempotency_key == f"flow-a:{trusting.pk}:{feed.id}"


def test_a_feed_starts_no_rebalance_when_it_is_refused() -> None:
    oracle, account = make_oracle()
    make_policy(make_vault(), whitelist=[make_protocol("Aave USDC")], oracles=[oracle])
    assert_refused(post_feed(token_client(), feed_body(account, now_s() + timedelta(hours=1))), 422, "future_feed")
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
    assert post_feed(token_client(), feed_body(account, now_s())).status_code == 201
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
