"""Flow A through a Safe's VaultPolicyModule, end to end on anvil with the real Safe and module
and real workers: a rebalance is one executeIntent sent by a key that only pays gas; what the
module would refuse is refused off chain first, naming the rule the module reverts with; a
rebalance whose last deposit cannot happen moves nothing; a worker killed during the relay
sends one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError

from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_sweep
from relayer.models import RelayTransaction
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.flows import DEPOSITS_REFUSED, ENTRIES, signed_feed
from tests.support.modules import module_vault, owners_execute
from tests.support.relays import RELAY_ENV, make_chain
from tests.support.safes import SafeSetup
from tests.vaults.test_flow_a import finished, run_for
from vaults import module as vpm
from vaults import onchain
from vaults.models import ExecutionIntent, IntentStatus, Protocol
from vaults.services.feeds import feed_accept
from vaults.services.intents import plan_actions
from vaults.services.module_intents import module_calls, module_intent, module_seen

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]

FLOW_ENV = {**RELAY_ENV, "FLOW_SETTLE_POLL_SECONDS": "1"}


@pytest.fixture
def setup(anvils: AnvilFactory) -> SafeSetup:
    return module_vault(make_chain(anvils.start(), poll_interval=0.1))


def w3_of(setup: SafeSetup) -> Web3:
    return Web3(Web3.HTTPProvider(setup.vault.chain.rpc_url))


def held(setup: SafeSetup) -> dict[str, int]:
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=setup.vault.chain)}
    found = onchain.positions(
        w3=w3_of(setup), account=setup.vault.safe_address, asset=setup.vault.asset_address, protocols=protocols
    )
    return {**found.by_protocol, "idle": found.idle}


def sent_by_account(setup: SafeSetup) -> list[RelayTransaction]:
    return list(RelayTransaction.objects.filter(signer=setup.vault.account))


def rebalance(setup: SafeSetup, entries: list[dict[str, object]] | None = None) -> WorkflowRun:
    feed = feed_accept(payload=signed_feed(setup.oracle, entries or ENTRIES))
    return run_for(str(feed.id))


def forced_revert(setup: SafeSetup, allocation: dict[str, str]) -> str:
    """The intent Flow A would have signed for `allocation` (the operator's real signature),
    asked of the module directly by eth_call: the name of the error it reverts with."""
    vault = setup.vault
    w3 = w3_of(setup)
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    positions = onchain.positions(w3=w3, account=vault.safe_address, asset=vault.asset_address, protocols=protocols)
    from decimal import Decimal

    plan = plan_actions(
        account=vault.safe_address,
        protocols=protocols,
        allocation={k: Decimal(v) for k, v in allocation.items()},
        idle=positions.idle,
        positions=positions.by_protocol,
    )
    seen = module_seen(rpc_url=vault.chain.rpc_url, module=vault.module_address, asset=vault.asset_address)
    intent = module_intent(
        seen=seen,
        chain_id=vault.chain.chain_id,
        calls=module_calls(actions=plan.actions, asset=vault.asset_address),
        deadline=seen.blockTime + 600,
    )
    signature = vpm.intent_sign_with_key(intent, key=vault.operator)
    call = {
        "from": vault.account.address,
        "to": vault.module_address,
        "data": vpm.execute_intent_calldata(intent, signature),
    }
    with pytest.raises(ContractLogicError) as caught:
        w3.eth.call(call)
    found = vpm.module_revert(str(caught.value.data))
    assert found is not None, caught.value
    return found.name


def test_a_rebalance_is_one_execute_intent_through_the_module(setup: SafeSetup, workers: Workers) -> None:
    workers.start(extra_env=FLOW_ENV)
    run = finished(rebalance(setup).id)
    intent = ExecutionIntent.objects.get(vault=setup.vault)
    assert intent.status == IntentStatus.EXECUTED and intent.module_intent is not None
    assert intent.module_intent["module"] == setup.vault.module_address and intent.module_intent["nonce"] == 0
    # Two deposits from an all-idle Safe: an approve of exactly each amount before each deposit.
    assert [a["kind"] for a in intent.actions] == ["deposit", "deposit"]
    assert len(intent.module_intent["calls"]) == 4
    (tx,) = sent_by_account(setup)
    assert tx.to == setup.vault.module_address and run.outputs["relay"]["transactions"] == [tx.mined_hash]
    assert run.transaction_id == tx.mined_hash  # what the run's status read returns
    target = {name: int(10**12 * float(pct) / 100) for name, pct in intent.allocation.items()}
    now = held(setup)
    assert {k: v for k, v in now.items() if v} == {k: v for k, v in target.items() if v}
    w3 = w3_of(setup)
    assert vpm.module_state(w3, setup.vault.module_address).nonce == 1
    # The account key paid the gas of one transaction and holds none of the funds.
    assert w3.eth.get_transaction_count(setup.vault.account.address) == 1
    assert (
        onchain.positions(
            w3=w3, account=setup.vault.account.address, asset=setup.vault.asset_address, protocols={}
        ).idle
        == 0
    )

    # A second feed that prefers Compound: withdraw, approve, deposit, still one transaction.
    entries = [dict(e) for e in ENTRIES]
    entries[1]["apy"] = "0.08"
    finished(rebalance(setup, entries).id)
    second = ExecutionIntent.objects.get(vault=setup.vault, nonce=2)
    assert second.status == IntentStatus.EXECUTED and second.module_intent is not None
    assert "withdraw" in [a["kind"] for a in second.actions] and second.module_intent["nonce"] == 1
    assert len(sent_by_account(setup)) == 2


def test_a_spending_limit_the_rebalance_exceeds_is_refused_off_chain_with_the_modules_rule(
    setup: SafeSetup, workers: Workers
) -> None:
    vault = setup.vault
    owners_execute(
        w3_of(setup),
        vault,
        list(setup.wallets.values())[:2],
        [
            vpm.set_spending_limit_call(
                module=vault.module_address, token=vault.asset_address, amount=10, period_seconds=86_400
            )
        ],
    )
    before = held(setup)
    workers.start(extra_env=FLOW_ENV)
    blocked = finished(rebalance(setup).id, Phase.BLOCKED, Phase.FAILED)
    assert blocked.phase == Phase.BLOCKED
    assert "SpendingLimitExceeded" in blocked.error, blocked.error
    assert not ExecutionIntent.objects.filter(vault=vault).exists() and not sent_by_account(setup)
    allocation = {"Morpho USDC": "60", "Aave USDC": "40"}
    assert forced_revert(setup, allocation) == "SpendingLimitExceeded"
    assert held(setup) == before


def test_an_operator_the_module_does_not_know_is_refused_off_chain_as_a_bad_signature(
    setup: SafeSetup, workers: Workers
) -> None:
    vault = setup.vault
    stranger = "0x" + "12" * 20
    owners_execute(
        w3_of(setup),
        vault,
        list(setup.wallets.values())[:2],
        [vpm.set_operator_call(module=vault.module_address, operator=stranger)],
    )
    workers.start(extra_env=FLOW_ENV)
    blocked = finished(rebalance(setup).id, Phase.BLOCKED, Phase.FAILED)
    assert blocked.phase == Phase.BLOCKED and "BadSignature" in blocked.error, blocked.error
    assert not sent_by_account(setup)
    assert forced_revert(setup, {"Morpho USDC": "60", "Aave USDC": "40"}) == "BadSignature"


def test_a_policy_the_module_does_not_hold_is_refused(setup: SafeSetup, workers: Workers) -> None:
    vault = setup.vault
    calls = [vpm.commit_policy_call(module=vault.module_address, policy_hash=b"\x01" * 32, allowed=[])]
    owners_execute(w3_of(setup), vault, list(setup.wallets.values())[:2], calls)
    workers.start(extra_env=FLOW_ENV)
    blocked = finished(rebalance(setup).id, Phase.BLOCKED, Phase.FAILED)
    # The module's own rule first, as it would revert: nothing is allowed under the policy it
    # holds. (PolicyNotCommitted is ours, for a plan the module would take under another policy.)
    assert blocked.phase == Phase.BLOCKED and "TargetNotAllowed" in blocked.error, blocked.error
    assert not sent_by_account(setup)
    assert forced_revert(setup, {"Morpho USDC": "60", "Aave USDC": "40"}) == "TargetNotAllowed"


def test_a_rebalance_whose_last_deposit_fails_moves_nothing(setup: SafeSetup, workers: Workers) -> None:
    vault = setup.vault
    w3 = w3_of(setup)
    # The protocol the last deposit goes to stops accepting deposits.
    morpho = Protocol.objects.get(chain=vault.chain, name="Morpho USDC").address
    w3.provider.make_request("anvil_setCode", [morpho, DEPOSITS_REFUSED])
    before = held(setup)
    workers.start(extra_env=FLOW_ENV)
    failed = finished(rebalance(setup).id, Phase.BLOCKED, Phase.FAILED)
    intent = ExecutionIntent.objects.get(vault=vault)
    assert intent.status == IntentStatus.FAILED and "CallFailed" in intent.error, (
        failed.phase,
        failed.error,
        [(t.phase, t.error) for t in sent_by_account(setup)],
    )
    assert failed.phase == Phase.FAILED
    assert held(setup) == before
    assert vpm.module_state(w3, vault.module_address).nonce == 0


@pytest.mark.parametrize("point", ["relay.before_broadcast", "relay.after_broadcast"])
def test_a_worker_killed_during_the_relay_sends_one_transaction(
    setup: SafeSetup, workers: Workers, tmp_path: Path, point: str
) -> None:
    workers.start(extra_env={**FLOW_ENV, "FAILPOINTS": point, "FAILPOINTS_DIR": str(tmp_path)})
    run = rebalance(setup)
    wait_until(lambda: (tmp_path / point).exists(), timeout=60, message=f"the worker to die at {point}")

    def completed() -> bool:
        workflow_sweep(stall_seconds=0)  # beat's sweep, which reclaims what the dead process held
        return WorkflowRun.objects.filter(pk=run.pk, phase=Phase.COMPLETED).exists()

    wait_until(completed, timeout=120, interval=0.3, message="the rebalance to complete after the crash")
    w3 = w3_of(setup)
    assert len(sent_by_account(setup)) == 1
    assert w3.eth.get_transaction_count(setup.vault.account.address) == 1
    assert vpm.module_state(w3, setup.vault.module_address).nonce == 1
    assert ExecutionIntent.objects.get(vault=setup.vault).status == IntentStatus.EXECUTED


def test_funds_leave_a_protocol_the_new_policy_no_longer_whitelists(setup: SafeSetup, workers: Workers) -> None:
    """Withdrawing back to the Safe is committed for every protocol of the chain, so a version
    that drops one still lets the rebalance leave it, through the module."""
    from decimal import Decimal

    from tests.support.modules import policy_commit_direct
    from vaults.models import VaultPolicy
    from vaults.services.policies import policy_activate, policy_draft

    workers.start(extra_env=FLOW_ENV)
    finished(rebalance(setup).id)
    first = ExecutionIntent.objects.get(vault=setup.vault)
    dropped = max(first.allocation, key=lambda name: Decimal(first.allocation[name]))
    assert held(setup)[dropped] > 0
    kept = Protocol.objects.filter(chain=setup.vault.chain).exclude(name=dropped)
    draft = policy_draft(vault=setup.vault, based_on=setup.policy, whitelist=kept)
    policy_commit_direct(setup, draft)
    policy_activate(policy=VaultPolicy.objects.get(pk=draft.pk))
    entries = [dict(e) for e in ENTRIES]
    entries[0]["apy"] = "0.051"  # another feed (the same one twice in a second is refused as seen)
    finished(rebalance(setup, entries).id)
    second = ExecutionIntent.objects.get(vault=setup.vault, nonce=2)
    assert second.status == IntentStatus.EXECUTED and second.module_intent is not None
    assert held(setup)[dropped] == 0
