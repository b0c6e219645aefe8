"""VaultPolicyModule's argument rules and spending limits on a real anvil with the real Safe
(v1.4.1), and every refusal of an intent named off chain (vaults.module.checks) with the same
error and arguments as the revert. The helpers are tests/vaults/test_policy_module_requests.py's."""

from __future__ import annotations

import dataclasses
from typing import Any

from relayer.rpc import as_address
from tests.vaults import test_policy_module as base
from tests.vaults.test_policy_module import DAY, FORGER, MINTED, OPERATOR, OWNERS, POLICY_HASH, approve, deposit
from tests.vaults.test_policy_module_requests import (
    ETHER,
    INCREASE_ALLOWANCE,
    PLAIN_ETH,
    TRANSFER_FROM,
    World,
    automated,
    calldata,
    intent_refused,
    intent_runs,
    now,
    operator_signed,
    request,
    request_refused,
    signed,
)
from vaults import module as vpm
from vaults import onchain
from vaults import safe as safe_lib

world = base.world  # the module-scoped fixture: anvil, the Safe's contracts, an asset, two vaults

# --- Argument rules and limits ----------------------------------------------------------------


def test_argument_rules_bind_the_receiver_and_the_spender(world: World) -> None:
    vault = automated(world)
    stranger = OWNERS[0].address
    for calls, index, word in (
        ([approve(world.asset, world.vault, 10), deposit(world.vault, 10, stranger)], 1, 1),  # shares to another
        ([approve(world.asset, world.other_vault, 10)], 0, 0),  # a spender outside the policy
        ([approve(world.asset, stranger, 10)], 0, 0),
        # A word that is no address at all.
        ([safe_lib.Call(world.asset, 0, calldata(onchain.APPROVE, 2**160 + int(world.vault, 16), 10))], 0, 0),
        ([safe_lib.Call(world.vault, 0, calldata(onchain.DEPOSIT, 10))], 0, 1),  # too short for a receiver
    ):
        revert = intent_refused(vault, *operator_signed(vault, calls))
        assert (revert.name, revert.args) == ("ArgumentNotAllowed", {"index": index, "word": word})

    intent_runs(
        vault, *operator_signed(vault, [approve(world.asset, world.vault, 10), deposit(world.vault, 10, vault.safe)])
    )
    assert vault.snapshot()[0].by_protocol == {"a": 10, "b": 0}


def test_limits_count_increase_allowance_transfer_from_and_eth(world: World) -> None:
    vault = automated(world)
    w3, deployer, payee = world.w3, world.deployer, OWNERS[0].address
    policy = [
        vpm.AllowedCall(world.asset, onchain.APPROVE, target_words=(0,)),
        vpm.AllowedCall(world.asset, INCREASE_ALLOWANCE, target_words=(0,)),
        vpm.AllowedCall(world.asset, TRANSFER_FROM, safe_words=(1,)),
        vpm.AllowedCall(world.vault, onchain.DEPOSIT, safe_words=(1,)),
        vpm.AllowedCall(payee, PLAIN_ETH),
    ]
    vault.owners_execute(
        [
            vpm.commit_policy_call(module=vault.module, policy_hash=POLICY_HASH, allowed=policy),
            vpm.set_spending_limit_call(module=vault.module, token=world.asset, amount=1_000, period_seconds=DAY),
            vpm.set_spending_limit_call(module=vault.module, token="0x" + "00" * 20, amount=ETHER, period_seconds=DAY),
        ]
    )
    # Two calls of one intent count against one limit: 600 approved, then 600 more asked.
    increase = safe_lib.Call(world.asset, 0, calldata(INCREASE_ALLOWANCE, world.vault, 600))
    revert = intent_refused(vault, *operator_signed(vault, [approve(world.asset, world.vault, 600), increase]))
    assert revert == vpm.ModuleRevert(
        "SpendingLimitExceeded", {"token": world.asset.lower(), "requested": 600, "remaining": 400}
    )

    # transferFrom counts its amount (word 2): the deployer lets the Safe pull 1_100.
    onchain.fund_vault_account(w3=w3, asset=world.asset, account_address=deployer, assets=1_100, eth=0)
    token: Any = w3.eth.contract(address=as_address(world.asset), abi=onchain.compiled()["TestAsset"].abi)
    w3.eth.wait_for_transaction_receipt(token.functions.approve(vault.safe, 1_100).transact({"from": deployer}))
    pull = safe_lib.Call(world.asset, 0, calldata(TRANSFER_FROM, deployer, vault.safe, 700))
    intent_runs(vault, *operator_signed(vault, [pull]))
    assert vault.snapshot()[0].idle == MINTED + 700
    pull = safe_lib.Call(world.asset, 0, calldata(TRANSFER_FROM, deployer, vault.safe, 400))
    revert = intent_refused(vault, *operator_signed(vault, [pull]))
    assert revert.args == {"token": world.asset.lower(), "requested": 400, "remaining": 300}

    # ETH sent as a call's value counts under address(0).
    onchain.fund_vault_account(w3=w3, asset=world.asset, account_address=vault.safe, assets=0, eth=2 * ETHER)
    pay = safe_lib.Call(payee, 6 * ETHER // 10, "0x")
    balance = w3.eth.get_balance(as_address(payee))
    intent_runs(vault, *operator_signed(vault, [pay]))
    assert w3.eth.get_balance(as_address(payee)) == balance + 6 * ETHER // 10
    revert = intent_refused(vault, *operator_signed(vault, [pay]))
    assert revert.args == {"token": "0x" + "00" * 20, "requested": 6 * ETHER // 10, "remaining": 4 * ETHER // 10}
    # ... through a request too.
    s = signed(vault, request(vault, pay))
    assert request_refused(vault, s).name == "SpendingLimitExceeded"


# --- Intents: every refusal named off chain too -----------------------------------------------


def test_every_intent_refusal_is_named_off_chain_as_on_chain(world: World) -> None:
    vault = automated(world)
    vault.owners_execute(
        [vpm.set_spending_limit_call(module=vault.module, token=world.asset, amount=500, period_seconds=DAY)]
    )
    calls = [approve(world.asset, world.vault, 100), deposit(world.vault, 100, vault.safe)]
    intent, signature = operator_signed(vault, calls)
    assert intent_refused(vault, intent, vpm.intent_sign(intent, FORGER.key)).name == "BadSignature"
    stale = dataclasses.replace(intent, policy_hash=b"\x02" * 32)
    assert intent_refused(vault, stale, vpm.intent_sign(stale, OPERATOR.key)).name == "BadSignature"
    elsewhere = dataclasses.replace(intent, chain_id=world.chain_id + 1)
    assert intent_refused(vault, elsewhere, vpm.intent_sign(elsewhere, OPERATOR.key)).name == "BadSignature"
    assert intent_refused(vault, intent, "0x" + "00" * 65).name == "BadSignature"

    intent_runs(vault, intent, signature)
    assert intent_refused(vault, intent, signature) == vpm.ModuleRevert("WrongNonce", {"expected": 1, "given": 0})
    deadline = now(vault) - 1
    expired = intent_refused(vault, *operator_signed(vault, calls, deadline=deadline))
    assert expired.name == "Expired" and expired.args["deadline"] == deadline

    withdraw = safe_lib.Call(world.vault, 0, onchain.withdraw_calldata(1, vault.safe, vault.safe))
    for call, selector in (
        (deposit(world.other_vault, 10, vault.safe), onchain.DEPOSIT),  # target outside the policy
        (withdraw, onchain.WITHDRAW),  # selector outside it
        (safe_lib.Call(OWNERS[0].address, 1, "0x"), PLAIN_ETH),
        (vpm.set_operator_call(module=vault.module, operator=FORGER.address), bytes.fromhex("b3ab15fb")),
    ):
        revert = intent_refused(vault, *operator_signed(vault, [approve(world.asset, world.vault, 1), call]))
        assert revert == vpm.ModuleRevert("TargetNotAllowed", {"to": call.to.lower(), "selector": selector})

    revert = intent_refused(vault, *operator_signed(vault, [approve(world.asset, world.other_vault, 1)]))
    assert revert.name == "ArgumentNotAllowed"
    revert = intent_refused(vault, *operator_signed(vault, [approve(world.asset, world.vault, 401)]))
    assert revert.args == {"token": world.asset.lower(), "requested": 401, "remaining": 400}
