"""Flow A's verify step against the database: what it journals, and what it refuses."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from django.utils import timezone
from eth_account import Account

from orchestrator.engine import Blocked, StepContext, TerminalError
from orchestrator.engine.definition import journaled
from relayer.models import Chain
from tests.support.vaults import emit_intent, entry, feed_body, make_oracle, make_policy, make_protocol, make_vault
from vaults.models import ExecutionIntent, IntentStatus, Protocol, SignedFeed, Vault
from vaults.services.feeds import feed_accept
from vaults.workflows import Verified, verify

pytestmark = pytest.mark.django_db


def _context(vault: Vault, feed: SignedFeed) -> StepContext:
    return StepContext(
        run_id=uuid.uuid4(),
        kind="vault.rebalance",
        step="verify",
        attempt=1,
        correlation_id="test",
        input={"vault": vault.pk, "feed": str(feed.id)},
        outputs={},
    )


def _verified(vault: Vault, feed: SignedFeed) -> dict[str, Any]:
    """verify's output as the journal keeps it."""
    output = journaled(verify(_context(vault, feed)))
    assert isinstance(output, dict)
    return output


def _feed(oracle: Any) -> SignedFeed:
    entries = [entry("Aave USDC", risk=1), entry("Compound USDC", apy="0.04", risk=2)]
    return feed_accept(payload=feed_body(oracle, timezone.now().replace(microsecond=0), entries))


def test_verify_journals_the_feed_the_policy_and_the_protocols_it_may_use() -> None:
    key, oracle = make_oracle()
    vault = make_vault()
    aave, compound = make_protocol("Aave USDC"), make_protocol("Compound USDC")
    make_protocol("Morpho USDC")  # on the vault's chain, not whitelisted
    elsewhere = Chain.objects.create(chain_id=8453, name="base", rpc_url="http://127.0.0.1:9")
    remote = Protocol.objects.create(chain=elsewhere, name="Base USDC", address=Account.create().address)
    policy = make_policy(vault, whitelist=[aave, compound, remote], oracles=[key], max_risk_score=4)
    feed = _feed(oracle)

    seen = _verified(vault, feed)

    # The journal's keys, as runs started before any change to verify have them.
    assert list(seen) == [
        "feed",
        "feedDigest",
        "feedTime",
        "entries",
        "policy",
        "policyVersion",
        "rules",
        "approvalThreshold",
        "intentTtlSeconds",
        "strategy",
        "rpcUrl",
        "account",
        "asset",
        "protocols",
        "intentNonce",
        "module",  # new and optional, as intentNonce was: runs journaled before them still resume
        "committedHash",
    ]
    assert seen["feed"] == str(feed.id) and seen["feedDigest"] == feed.digest
    assert seen["feedTime"] == feed.timestamp.isoformat() and seen["entries"] == feed.entries
    assert (seen["policy"], seen["policyVersion"]) == (policy.pk, policy.version)
    assert seen["rules"]["maxRisk"] == 4
    # The whitelist is read whole (a protocol of another chain included); the addresses are
    # those on the vault's chain, whitelisted or not.
    assert sorted(seen["rules"]["whitelist"]) == ["Aave USDC", "Base USDC", "Compound USDC"]
    assert seen["protocols"] == {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    assert "Base USDC" not in seen["protocols"]
    assert seen["approvalThreshold"] == str(policy.approval_threshold)
    assert seen["intentTtlSeconds"] == policy.intent_ttl_seconds
    assert (seen["rpcUrl"], seen["account"], seen["asset"]) == (
        vault.chain.rpc_url,
        vault.account.address,
        vault.asset_address,
    )
    assert seen["strategy"] == vault.strategy
    assert seen["intentNonce"] == 0


def test_verify_blocks_a_vault_whose_last_intent_is_still_executing() -> None:
    key, oracle = make_oracle()
    vault = make_vault()
    policy = make_policy(vault, whitelist=[make_protocol("Aave USDC")], oracles=[key])
    feed = _feed(oracle)
    intent = emit_intent(vault, policy)
    with pytest.raises(Blocked, match=f"intent #{intent.nonce} of this vault is still executing"):
        verify(_context(vault, feed))
    ExecutionIntent.objects.filter(pk=intent.pk).update(status=IntentStatus.EXECUTED)
    assert _verified(vault, feed)["intentNonce"] == intent.nonce


def test_verify_blocks_a_vault_without_an_active_policy() -> None:
    _, oracle = make_oracle()
    vault = make_vault()
    with pytest.raises(Blocked, match="vault-eth-001 has no active policy"):
        verify(_context(vault, _feed(oracle)))


def test_verify_blocks_a_feed_from_an_oracle_the_policy_does_not_trust() -> None:
    _, oracle = make_oracle()
    trusted, _ = make_oracle("trusted")
    vault = make_vault()
    make_policy(vault, whitelist=[make_protocol("Aave USDC")], oracles=[trusted])
    with pytest.raises(Blocked, match=f"oracle {oracle.address} is not trusted by policy v1"):
        verify(_context(vault, _feed(oracle)))


def test_verify_refuses_a_stored_feed_whose_signature_no_longer_verifies() -> None:
    key, oracle = make_oracle()
    vault = make_vault()
    make_policy(vault, whitelist=[make_protocol("Aave USDC")], oracles=[key])
    feed = _feed(oracle)
    SignedFeed.objects.filter(pk=feed.pk).update(entries=[entry("Aave USDC", apy="0.99")])
    with pytest.raises(TerminalError, match="no longer verifies"):
        verify(_context(vault, feed))


def test_a_verify_journaled_before_it_read_the_intent_nonce_reads_back_without_it() -> None:
    key, oracle = make_oracle()
    vault = make_vault()
    make_policy(vault, whitelist=[make_protocol("Aave USDC")], oracles=[key])
    feed = _feed(oracle)
    old = _verified(vault, feed)
    del old["intentNonce"]
    later = replace(_context(vault, feed), step="positions", outputs={"verify": old})
    seen = later.output("verify", Verified)
    assert seen.intentNonce is None and seen.policy == old["policy"]
