"""Flow A's refusals through a Safe's VaultPolicyModule that test_flow_a_module.py does not make,
on anvil with the real Safe and module and real workers: a replayed intent, an expired deadline
and a target outside the module's policy are each refused off chain first (by decide's check, or
by the relayer's simulation before anything is broadcast) naming the module's rule with its
arguments, and the same intent forced on chain reverts with that error and moves nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from web3.exceptions import ContractLogicError

from orchestrator.engine.models import Phase, WorkflowRun
from relayer.models import RelayTransaction, TxPhase
from relayer.rpc import as_address
from relayer.services.requests import relay_request
from tests.conftest import Workers, wait_until
from tests.support.modules import owners_execute
from tests.support.safes import SafeSetup
from tests.vaults import test_flow_a_module as base
from tests.vaults.test_flow_a import finished
from tests.vaults.test_flow_a_module import FLOW_ENV, held, rebalance, sent_by_account, w3_of
from vaults import module as vpm
from vaults import onchain
from vaults.models import ExecutionIntent, IntentStatus, Protocol
from vaults.services.intents import plan_actions
from vaults.services.module_intents import module_calls, module_intent, module_intent_of, module_refusal, module_seen
from vaults.services.module_policy import policy_allowed_calls, policy_hash

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]

setup = base.setup  # a module vault on an anvil of its own (these tests move its clock)


def forced(setup: SafeSetup, intent: vpm.ModuleIntent) -> vpm.ModuleRevert:
    """`intent`, signed by the vault's operator key, sent to the module anyway by a node account
    that is neither owner nor operator: eth_call names the error, the mined transaction reverts,
    and the Safe's positions and the module's nonce stay as they were."""
    w3, vault = w3_of(setup), setup.vault
    before = held(setup), vpm.module_state(w3, vault.module_address).nonce
    signature = vpm.intent_sign_with_key(intent, key=vault.operator)
    tx: Any = {
        "from": w3.eth.accounts[2],
        "to": vault.module_address,
        "data": vpm.execute_intent_calldata(intent, signature),
    }
    with pytest.raises(ContractLogicError) as caught:
        w3.eth.call(tx)
    found = vpm.module_revert(str(caught.value.data))
    assert found is not None, caught.value
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({**tx, "gas": 1_000_000}), timeout=30)
    assert receipt["status"] == 0
    assert (held(setup), vpm.module_state(w3, vault.module_address).nonce) == before
    return found


def planned(setup: SafeSetup, run: WorkflowRun, *, deadline: int) -> vpm.ModuleIntent:
    """The module intent for the run's own target allocation (journaled by its allocate step),
    planned from the positions now, at the module's next nonce."""
    vault = setup.vault
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    now = onchain.positions(w3=w3_of(setup), account=vault.safe_address, asset=vault.asset_address, protocols=protocols)
    allocation = {k: Decimal(v) for k, v in run.outputs["allocate"]["allocation"].items()}
    plan = plan_actions(
        account=vault.safe_address, protocols=protocols, allocation=allocation, idle=now.idle, positions=now.by_protocol
    )
    seen = module_seen(rpc_url=vault.chain.rpc_url, module=vault.module_address, asset=vault.asset_address)
    calls = module_calls(actions=plan.actions, asset=vault.asset_address)
    return module_intent(seen=seen, chain_id=vault.chain.chain_id, calls=calls, deadline=deadline)


def blocked_by_module(run: WorkflowRun) -> WorkflowRun:
    blocked = finished(run.id, Phase.BLOCKED, Phase.FAILED)
    assert blocked.phase == Phase.BLOCKED, blocked.error
    assert "the policy module would refuse this rebalance" in blocked.error, blocked.error
    return blocked


def test_a_replayed_intent_is_refused_before_broadcast_as_wrong_nonce(setup: SafeSetup, workers: Workers) -> None:
    vault = setup.vault
    w3 = w3_of(setup)
    workers.start(extra_env=FLOW_ENV)
    finished(rebalance(setup).id)
    executed = ExecutionIntent.objects.get(vault=vault)
    assert executed.status == IntentStatus.EXECUTED and executed.module_intent is not None
    after = held(setup)
    stored = module_intent_of(executed.module_intent, chain_id=vault.chain.chain_id)
    expected = vpm.ModuleRevert("WrongNonce", {"expected": 1, "given": 0})

    # decide's check, on the module as it is now.
    setup.policy.refresh_from_db()
    seen = module_seen(rpc_url=vault.chain.rpc_url, module=vault.module_address, asset=vault.asset_address)
    refused = module_refusal(
        seen=seen,
        intent=stored,
        operator=vault.operator.address,
        asset=vault.asset_address,
        committed_hash=setup.policy.committed_hash,
        version=setup.policy.version,
    )
    assert refused == vpm.module_error_of(expected)

    # The same signed bytes handed to the relayer again (another idempotency key, so a new
    # request): its simulation refuses them with the module's rule and nothing is broadcast.
    data = vpm.execute_intent_calldata(stored, executed.signature)
    again = relay_request(
        signer=vault.account, chain=vault.chain, to=vault.module_address, data=data, idempotency_key="replay"
    )
    failed = wait_until(
        lambda: RelayTransaction.objects.filter(pk=again.pk, phase__in=(TxPhase.FAILED, TxPhase.DEAD_LETTER)).first(),
        timeout=60,
        message="the replayed intent's relay to fail",
    )
    assert failed.error.startswith("simulation reverted"), failed.error
    assert vpm.module_error(failed.error) == refused
    assert w3.eth.get_transaction_count(vault.account.address) == 1 and len(sent_by_account(setup)) == 2

    # Forced on chain by anyone: the same error, the same arguments.
    tx: Any = {"from": w3.eth.accounts[2], "to": vault.module_address, "data": data}
    with pytest.raises(ContractLogicError) as caught:
        w3.eth.call(tx)
    assert vpm.module_revert(str(caught.value.data)) == expected
    assert w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({**tx, "gas": 1_000_000}))["status"] == 0
    assert held(setup) == after and vpm.module_state(w3, vault.module_address).nonce == 1


def test_a_deadline_the_chain_has_passed_is_refused_off_chain_as_expired(setup: SafeSetup, workers: Workers) -> None:
    """The module compares the deadline (feed time + the policy's intent lifetime) with the
    block's time, and so does decide's check: a chain whose clock runs two hours ahead of ours
    has passed a deadline a fresh feed gives an hour from now."""
    w3 = w3_of(setup)
    w3.provider.make_request("evm_increaseTime", [7200])
    w3.provider.make_request("evm_mine", [])
    before = held(setup)
    workers.start(extra_env=FLOW_ENV)
    blocked = blocked_by_module(rebalance(setup))
    feed_time = datetime.fromisoformat(blocked.outputs["verify"]["feedTime"])
    deadline = int((feed_time + timedelta(seconds=setup.policy.intent_ttl_seconds)).timestamp())
    assert f"Expired: {vpm.MODULE_ERRORS['Expired']} (deadline={deadline}, nowTs=" in blocked.error, blocked.error
    assert not ExecutionIntent.objects.filter(vault=setup.vault).exists() and not sent_by_account(setup)

    revert = forced(setup, planned(setup, blocked, deadline=deadline))
    assert revert.name == "Expired" and revert.args["deadline"] == deadline
    assert held(setup) == before


def test_a_call_outside_the_modules_policy_is_refused_off_chain_as_target_not_allowed(
    setup: SafeSetup, workers: Workers
) -> None:
    """The owners commit the active version's hash with one pair fewer (the hash is a label the
    module does not recompute): the version's check passes, the module's own rule refuses."""
    vault, policy = setup.vault, setup.policy
    morpho = as_address(Protocol.objects.get(chain=vault.chain, name="Morpho USDC").address)
    allowed = [a for a in policy_allowed_calls(policy) if (a.to, a.selector) != (morpho, onchain.DEPOSIT)]
    commit = vpm.commit_policy_call(module=vault.module_address, policy_hash=policy_hash(policy), allowed=allowed)
    owners_execute(w3_of(setup), vault, list(setup.wallets.values())[:2], [commit])
    assert vpm.module_state(w3_of(setup), vault.module_address).policy_hash == policy_hash(policy)
    before = held(setup)
    workers.start(extra_env=FLOW_ENV)
    blocked = blocked_by_module(rebalance(setup))
    expected = vpm.ModuleRevert("TargetNotAllowed", {"to": morpho.lower(), "selector": onchain.DEPOSIT})
    assert vpm.module_error_of(expected) in blocked.error, blocked.error
    assert not ExecutionIntent.objects.filter(vault=vault).exists() and not sent_by_account(setup)

    seen_time = int(w3_of(setup).eth.get_block("latest")["timestamp"])
    assert forced(setup, planned(setup, blocked, deadline=seen_time + 600)) == expected
    assert held(setup) == before
