"""VaultPolicyModule's automation requests on a real anvil with the real Safe (v1.4.1): a
validated request runs once; every refusal reverts with its named error, changes nothing, and
the off-chain check (vaults.module.checks) names the same error with the same arguments. The
helpers here serve test_policy_module_rules.py too (argument rules, limits, intent refusals)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from web3.exceptions import ContractLogicError

from orchestrator.automations.typed_data import execution_request_sign
from relayer.keys import key_manager
from relayer.models import KeyPurpose
from relayer.rpc import as_address
from tests.support.signatures import high_s_twin, with_v
from tests.vaults import test_policy_module as base
from tests.vaults.test_policy_module import (
    FORGER,
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
    return "0x" + (selector + abi_encode(["uint256"] * len(words), [int(str(w), 0) for w in words])).hex()


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
    tokens = (vault.world.asset, vault.world.vault, "0x" + "00" * 20)
    found = {as_address(t): module_limit(vault.w3, module=vault.module, token=t) for t in tokens}
    return {token: limit for token, limit in found.items() if limit is not None}


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
    assert (off_chain.name, off_chain.args | {"nowTs": 0}) == (revert.name, revert.args | {"nowTs": 0})
    return revert


def intent_check(vault: Vault, intent: vpm.ModuleIntent, signature: str) -> vpm.ModuleRevert | None:
    state = vpm.module_state(vault.w3, vault.module)
    signer = vpm.intent_signer(state, intent, signature)
    return vpm.intent_refusal(state, intent, signer=signer, now=now(vault), limits=limits(vault))


def intent_refused(vault: Vault, intent: vpm.ModuleIntent, signature: str) -> vpm.ModuleRevert:
    return same(intent_check(vault, intent, signature), on_chain(vault, vpm.execute_intent_calldata(intent, signature)))


def intent_runs(vault: Vault, intent: vpm.ModuleIntent, signature: str) -> None:
    assert intent_check(vault, intent, signature) is None
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
    fields = {"module": vault.module, "chain_id": vault.world.chain_id, "request_id": str(uuid.uuid4())}
    fields |= {"subaccount": vault.safe, "call_type": 0, "to": call.to, "value": call.value}
    return vpm.ModuleRequest(**{**fields, "data": bytes.fromhex(call.data[2:]), **changes})


def signed(
    vault: Vault,
    req: vpm.ModuleRequest,
    *,
    executor: Any = EXECUTOR,
    validator: Any = VALIDATOR,
    expiry: int = 0,
    policy_hash: bytes = POLICY_HASH,
) -> Signed:
    """The request signed by `executor`, countersigned by `validator` until `expiry` (0: in 10 minutes)."""
    expiry = expiry or now(vault) + 600
    validation = vpm.validation_sign(req, policy_hash, expiry, validator.key)
    return Signed(req, vpm.request_sign(req, executor.key), expiry, validation)


def request_check(vault: Vault, s: Signed) -> vpm.ModuleRevert | None:
    state = vpm.module_state(vault.w3, vault.module)
    signatures = {"executor_signature": s.executor_signature, "validator_signature": s.validator_signature}
    executor, validator = vpm.request_signers(state, s.req, expiry=s.expiry, **signatures)
    registered = {e for e in (executor,) if e and vpm.executor_registered(vault.w3, module=vault.module, executor=e)}
    used = vpm.request_used(vault.w3, module=vault.module, request_id=s.req.request_id)
    facts = {"registered_executors": registered, "validator_signer": validator, "used": used}
    return vpm.request_refusal(
        state, s.req, executor=executor, expiry=s.expiry, now=now(vault), limits=limits(vault), **facts
    )


def request_refused(vault: Vault, s: Signed) -> vpm.ModuleRevert:
    return same(request_check(vault, s), on_chain(vault, s.data))


def relayed(vault: Vault, s: Signed) -> Any:
    assert request_check(vault, s) is None
    tx = {"from": vault.world.relayer, "to": as_address(vault.module), "data": s.data}
    return vault.w3.eth.wait_for_transaction_receipt(vault.w3.eth.send_transaction(tx), timeout=30)


def sign_typed_data_by_node(vault: Vault, account: str, typed: dict[str, Any]) -> str:
    """A signature by an unlocked node account (the relayer key), eth_signTypedData_v4."""
    return str(vault.w3.provider.make_request("eth_signTypedData_v4", [account, json.dumps(typed)])["result"])


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


# --- Automation requests ----------------------------------------------------------------------


def test_a_validated_request_runs_once(world: World) -> None:
    vault = automated(world)
    s = signed(vault, request(vault, approve(world.asset, world.vault, 100)))
    receipt = relayed(vault, s)
    assert receipt["status"] == 1 and vault.snapshot()[1] == (100, 0)
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
    # OpenZeppelin's ECDSA refuses the high-s twin and v written 0/1; so does the check.
    for other in (
        high_s_twin(s.executor_signature),
        with_v(s.executor_signature, int(s.executor_signature[-2:], 16) - 27),
    ):
        twin = dataclasses.replace(s, executor_signature=other)
        assert request_refused(vault, twin) == vpm.ModuleRevert("UnknownExecutor", {"signer": "0x" + "00" * 20})
    twin = dataclasses.replace(s, validator_signature=high_s_twin(s.validator_signature))
    assert request_refused(vault, twin).name == "BadValidatorSignature"
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
    wrong = vpm.ModuleRevert("WrongSubaccount", {"subaccount": OWNERS[0].address.lower()})
    assert request_refused(vault, foreign) == wrong
    outside = signed(vault, request(vault, deposit(world.other_vault, 1, vault.safe)))
    assert request_refused(vault, outside).name == "TargetNotAllowed"
    to_stranger = signed(vault, request(vault, approve(world.asset, OWNERS[0].address, 1)))
    assert request_refused(vault, to_stranger) == vpm.ModuleRevert("ArgumentNotAllowed", {"index": 0, "word": 0})

    short = signed(vault, request(vault, good), expiry=now(vault) + 60)
    assert request_check(vault, short) is None
    world.w3.provider.make_request("evm_increaseTime", [120])
    world.w3.provider.make_request("evm_mine", [])
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
    digest = vpm.validation_digest(req, POLICY_HASH, good.expiry)
    assert vpm.recover(digest, as_validator.validator_signature) == as_address(relayer)
    assert request_refused(vault, as_validator).name == "BadValidatorSignature"
    assert relayed(vault, good)["status"] == 1


@pytest.mark.django_db
def test_a_request_countersigned_by_the_key_manager_runs(world: World) -> None:
    key = key_manager().create_key(purpose=KeyPurpose.OPERATOR, label="policy module validator test")
    vault = automated(world)
    vault.owners_execute([set_validator_call(module=vault.module, validator=key.address)])
    req = request(vault, approve(world.asset, world.vault, 3))
    expiry = now(vault) + 600
    validation = vpm.validation_sign_with_key(req, POLICY_HASH, expiry, key=key)
    assert relayed(vault, Signed(req, vpm.request_sign(req, EXECUTOR.key), expiry, validation))["status"] == 1
    assert vault.snapshot()[1] == (3, 0)
