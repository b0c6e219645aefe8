"""VaultPolicyModule's argument rules, spending limits and automation requests on a real anvil
with the real Safe (v1.4.1); and, for every refusal, the off-chain check (vaults.module.checks)
names the same custom error, with the same arguments, as the revert."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import pytest
from eth_account import Account
from web3.exceptions import ContractLogicError

from orchestrator.automations.typed_data import execution_request_sign
from relayer.rpc import as_address
from tests.vaults import test_policy_module as base
from tests.vaults.test_policy_module import (
    DAY,
    FORGER,
    MINTED,
    OPERATOR,
    OWNERS,
    POLICY_HASH,
    Vault,
    World,
    approve,
    deposit,
    vault_with_module,
)
from vaults import module as vpm
from vaults import onchain
from vaults import safe as safe_lib
from vaults.module.contract import Limit, module_limit, set_executor_call, set_validator_call

VALIDATOR = Account.from_key("0x" + f"{0x7A11D0:064x}")
EXECUTOR = Account.from_key("0x" + f"{0xE7EC00:064x}")
ETHER = 10**18
INCREASE_ALLOWANCE = bytes.fromhex("39509351")
TRANSFER_FROM = bytes.fromhex("23b872dd")
PLAIN_ETH = b"\x00" * 4
world = base.world  # the module-scoped fixture: anvil, the Safe's contracts, an asset, two vaults


def calldata(selector: bytes, *words: int | str) -> str:
    """A call's data: the selector, then each argument as a 32-byte word (addresses too)."""
    return (
        "0x"
        + (
            selector
            + b"".join(int(w, 16).to_bytes(32, "big") if isinstance(w, str) else w.to_bytes(32, "big") for w in words)
        ).hex()
    )


def automated(world: World) -> Vault:
    """vault_with_module, with argument rules (approve only to a policy target, deposit only for
    the Safe), the validator set and the executor registered by the owners."""
    vault = vault_with_module(world)
    policy = [
        vpm.AllowedCall(world.asset, onchain.APPROVE, target_words=(0,)),
        vpm.AllowedCall(world.vault, onchain.DEPOSIT, safe_words=(1,)),
    ]
    vault.owners_execute(
        [
            vpm.commit_policy_call(module=vault.module, policy_hash=POLICY_HASH, allowed=policy),
            set_validator_call(module=vault.module, validator=VALIDATOR.address),
            set_executor_call(module=vault.module, executor=EXECUTOR.address),
        ]
    )
    return vault


def now(vault: Vault) -> int:
    return int(vault.w3.eth.get_block("latest")["timestamp"])


def limits(vault: Vault) -> dict[str, Limit]:
    """The module's limits on the tokens these tests call, and on ETH."""
    found: dict[str, Limit] = {}
    for token in (vault.world.asset, vault.world.vault, "0x" + "00" * 20):
        limit = module_limit(vault.w3, module=vault.module, token=token)
        if limit is not None:
            found[as_address(token)] = limit
    return found


def on_chain(vault: Vault, data: str) -> vpm.ModuleRevert:
    """The module's refusal of `data`: asked by eth_call, then mined as a reverted transaction
    (sent by the relayer key) that changed nothing."""
    w3, tx = vault.w3, {"from": vault.world.relayer, "to": as_address(vault.module), "data": data}
    before = vault.snapshot()
    with pytest.raises(ContractLogicError) as caught:
        w3.eth.call(tx)
    decoded = vpm.module_revert(str(caught.value.data))
    assert decoded is not None, caught.value
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({**tx, "gas": 1_000_000}), timeout=30)
    assert receipt["status"] == 0 and vault.snapshot() == before
    return decoded


def same(off_chain: vpm.ModuleRevert | None, revert: vpm.ModuleRevert) -> vpm.ModuleRevert:
    """The off-chain check named the revert's error with its arguments (the block time aside)."""
    assert off_chain is not None, f"the off-chain check lets through what reverts with {revert}"
    assert off_chain.name == revert.name
    drop = {"nowTs"}
    assert {k: v for k, v in off_chain.args.items() if k not in drop} == {
        k: v for k, v in revert.args.items() if k not in drop
    }
    return revert


def intent_refused(vault: Vault, intent: vpm.ModuleIntent, signature: str) -> vpm.ModuleRevert:
    state = vpm.module_state(vault.w3, vault.module)
    off_chain = vpm.intent_refusal(
        state,
        intent,
        signer=vpm.intent_signer(state, intent, signature),
        now=now(vault),
        limits=limits(vault),
    )
    return same(off_chain, on_chain(vault, vpm.execute_intent_calldata(intent, signature)))


def intent_runs(vault: Vault, intent: vpm.ModuleIntent, signature: str) -> None:
    state = vpm.module_state(vault.w3, vault.module)
    signer = vpm.intent_signer(state, intent, signature)
    assert signer == OPERATOR.address
    assert vpm.intent_refusal(state, intent, signer=signer, now=now(vault), limits=limits(vault)) is None
    assert vault.submit(intent, signature)["status"] == 1


def operator_signed(vault: Vault, calls: list[safe_lib.Call], **changes: Any) -> tuple[vpm.ModuleIntent, str]:
    intent = vault.intent(calls, **changes)
    return intent, vpm.intent_sign(intent, OPERATOR.key)


@dataclasses.dataclass
class Signed:
    """A request with its executor's signature and the validator's countersignature."""

    req: vpm.ModuleRequest
    executor_signature: str
    expiry: int
    validator_signature: str

    @property
    def data(self) -> str:
        return vpm.execute_request_calldata(self.req, self.executor_signature, self.expiry, self.validator_signature)


def request(vault: Vault, call: safe_lib.Call, **changes: Any) -> vpm.ModuleRequest:
    fields: dict[str, Any] = {
        "module": vault.module,
        "chain_id": vault.world.chain_id,
        "request_id": str(uuid.uuid4()),
        "subaccount": vault.safe,
        "call_type": 0,
        "to": call.to,
        "value": call.value,
        "data": bytes.fromhex(call.data[2:]),
    }
    return vpm.ModuleRequest(**{**fields, **changes})


def signed(
    vault: Vault,
    req: vpm.ModuleRequest,
    *,
    executor: Any = EXECUTOR,
    validator: Any = VALIDATOR,
    expiry: int | None = None,
    policy_hash: bytes = POLICY_HASH,
) -> Signed:
    expiry = now(vault) + 600 if expiry is None else expiry
    return Signed(
        req,
        vpm.request_sign(req, executor.key),
        expiry,
        vpm.validation_sign(req, policy_hash, expiry, validator.key),
    )


def request_check(vault: Vault, s: Signed) -> vpm.ModuleRevert | None:
    state = vpm.module_state(vault.w3, vault.module)
    executor, validator = vpm.request_signers(
        state,
        s.req,
        executor_signature=s.executor_signature,
        expiry=s.expiry,
        validator_signature=s.validator_signature,
    )
    registered = {e for e in (executor,) if e and vpm.executor_registered(vault.w3, module=vault.module, executor=e)}
    return vpm.request_refusal(
        state,
        s.req,
        executor=executor,
        registered_executors=registered,
        validator_signer=validator,
        expiry=s.expiry,
        now=now(vault),
        used=vpm.request_used(vault.w3, module=vault.module, request_id=s.req.request_id),
        limits=limits(vault),
    )


def request_refused(vault: Vault, s: Signed) -> vpm.ModuleRevert:
    return same(request_check(vault, s), on_chain(vault, s.data))


def relayed(vault: Vault, s: Signed) -> Any:
    assert request_check(vault, s) is None
    tx = {"from": vault.world.relayer, "to": as_address(vault.module), "data": s.data}
    return vault.w3.eth.wait_for_transaction_receipt(vault.w3.eth.send_transaction(tx), timeout=30)


def sign_typed_data_by_node(vault: Vault, account: str, typed: dict[str, Any]) -> str:
    """A signature by an unlocked node account (the relayer key), eth_signTypedData_v4."""
    answer = vault.w3.provider.make_request("eth_signTypedData_v4", [account, json.dumps(typed)])
    return str(answer["result"])


def elapse(world: World, seconds: int) -> None:
    world.w3.provider.make_request("evm_increaseTime", [seconds])
    world.w3.provider.make_request("evm_mine", [])


# --- Digests ---------------------------------------------------------------------------------


def test_the_module_computes_the_automation_apis_request_digest(world: World) -> None:
    vault = automated(world)
    req = request(vault, approve(world.asset, world.vault, 7))
    contract: Any = world.w3.eth.contract(address=as_address(vault.module), abi=vpm.module_abi())
    digest = vpm.request_digest(req)
    assert bytes(contract.functions.requestDigest(req.as_tuple()).call()) == digest
    # An executor signing with the automation API's own code signs the same digest.
    executable = {"callType": 0, "to": req.to, "value": "0", "data": "0x" + req.data.hex()}
    signature = execution_request_sign(
        EXECUTOR, chain_id=world.chain_id, request_id=req.request_id, subaccount=vault.safe, executable=executable
    )
    assert vpm.recover(digest, signature) == EXECUTOR.address
    assert bytes(contract.functions.validationDigest(digest, 99).call()) == vpm.validation_digest(req, POLICY_HASH, 99)


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
    assert (revert.name, revert.args) == (
        "SpendingLimitExceeded",
        {"token": world.asset.lower(), "requested": 600, "remaining": 400},
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
    expired = intent_refused(vault, *operator_signed(vault, calls, deadline=now(vault) - 1))
    assert expired.name == "Expired" and expired.args["deadline"] == now(vault) - 1

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


# --- Automation requests ----------------------------------------------------------------------


def test_a_validated_request_runs_once(world: World) -> None:
    vault = automated(world)
    s = signed(vault, request(vault, approve(world.asset, world.vault, 100)))
    receipt = relayed(vault, s)
    assert receipt["status"] == 1
    print(f"\nexecuteRequest (approve) gas used: {receipt['gasUsed']}")
    assert vault.snapshot()[1] == (100, 0)
    assert vpm.request_used(world.w3, module=vault.module, request_id=s.req.request_id)
    assert request_refused(vault, s) == vpm.ModuleRevert("RequestReplayed", {"requestID": s.req.request_id})
    # The same requestID for another call is the same request: refused as well.
    other = dataclasses.replace(s.req, data=bytes.fromhex(approve(world.asset, world.vault, 5).data[2:]))
    assert request_refused(vault, signed(vault, other)).name == "RequestReplayed"


def test_every_request_refusal_is_named_off_chain_as_on_chain(world: World) -> None:
    vault = automated(world)
    good = approve(world.asset, world.vault, 100)
    forged = request_refused(vault, signed(vault, request(vault, good), executor=FORGER))
    assert forged == vpm.ModuleRevert("UnknownExecutor", {"signer": FORGER.address.lower()})
    s = signed(vault, request(vault, good))
    malformed = dataclasses.replace(s, executor_signature="0x" + "00" * 65)
    assert request_refused(vault, malformed) == vpm.ModuleRevert("UnknownExecutor", {"signer": "0x" + "00" * 20})
    # Signed for another chain, the module recovers someone else.
    elsewhere = signed(vault, request(vault, good, chain_id=world.chain_id + 1))
    assert request_refused(vault, elsewhere).name == "UnknownExecutor"

    assert request_refused(vault, signed(vault, request(vault, good), validator=FORGER)).name == "BadValidatorSignature"
    stale = signed(vault, request(vault, good), policy_hash=b"\x02" * 32)
    assert request_refused(vault, stale).name == "BadValidatorSignature"
    other_module = signed(vault, request(vault, good, module=world.vault))
    assert request_refused(vault, other_module).name == "BadValidatorSignature"

    delegate = signed(vault, request(vault, good, call_type=1))
    assert request_refused(vault, delegate) == vpm.ModuleRevert("DelegateCallNotAllowed", {})
    foreign = signed(vault, request(vault, good, subaccount=OWNERS[0].address))
    assert request_refused(vault, foreign) == vpm.ModuleRevert(
        "WrongSubaccount", {"subaccount": OWNERS[0].address.lower()}
    )
    outside = signed(vault, request(vault, deposit(world.other_vault, 1, vault.safe)))
    assert request_refused(vault, outside).name == "TargetNotAllowed"
    to_stranger = signed(vault, request(vault, approve(world.asset, OWNERS[0].address, 1)))
    assert request_refused(vault, to_stranger) == vpm.ModuleRevert("ArgumentNotAllowed", {"index": 0, "word": 0})

    short = signed(vault, request(vault, good), expiry=now(vault) + 60)
    assert request_check(vault, short) is None
    elapse(world, 120)
    expired = request_refused(vault, short)
    assert expired.name == "ValidationExpired" and expired.args["expiry"] == short.expiry

    # Once the owners remove the executor, its requests are unknown.
    vault.owners_execute([set_executor_call(module=vault.module, executor=EXECUTOR.address, allowed=False)])
    removed = request_refused(vault, signed(vault, request(vault, good)))
    assert removed == vpm.ModuleRevert("UnknownExecutor", {"signer": EXECUTOR.address.lower()})


def test_the_relayer_key_cannot_sign_for_the_module(world: World) -> None:
    vault = automated(world)
    relayer = world.relayer
    intent = vault.intent([approve(world.asset, world.vault, 1)])
    assert intent_refused(vault, intent, sign_typed_data_by_node(vault, relayer, intent.typed_data())).name == (
        "BadSignature"
    )
    req = request(vault, approve(world.asset, world.vault, 1))
    good = signed(vault, req)
    as_executor = dataclasses.replace(
        good, executor_signature=sign_typed_data_by_node(vault, relayer, req.typed_data())
    )
    assert request_refused(vault, as_executor) == vpm.ModuleRevert("UnknownExecutor", {"signer": relayer.lower()})
    # The relayer countersigning as validator, over the right typed data.
    typed = vpm.validation_typed_data(req, POLICY_HASH, good.expiry)
    as_validator = dataclasses.replace(good, validator_signature=sign_typed_data_by_node(vault, relayer, typed))
    assert vpm.recover(vpm.validation_digest(req, POLICY_HASH, good.expiry), as_validator.validator_signature) == (
        as_address(relayer)
    )
    assert request_refused(vault, as_validator).name == "BadValidatorSignature"
    assert relayed(vault, good)["status"] == 1
