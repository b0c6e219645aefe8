"""The automation path's refusals through a Safe's VaultPolicyModule that
test_module_subaccount.py does not make, on anvil with the real Safe and module: the check a
firing runs (module_route.module_check) refuses a forged or altered request, a spending limit
exceeded and a validator the module does not know, each with the module's error and arguments
as the same request forced on chain reverts with; a countersignature that expires before the
relay, and a relayer key calling the module itself, are refused by the relayer's simulation
before anything is broadcast, naming the error the chain then reverts with."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings
from eth_account import Account
from web3 import Web3

from orchestrator.automations.models import Subscription
from orchestrator.automations.services.answers import ReviewedTask
from orchestrator.automations.services.module_route import (
    Countersigned,
    ModuleRefusal,
    canonical_signature,
    module_calldata,
    module_check,
    module_request,
    relay_error,
    validator_key,
)
from orchestrator.automations.typed_data import execution_request_sign
from relayer.models import Chain, RelayTransaction, SigningKey, TxPhase
from relayer.rpc import as_address
from relayer.services.requests import relay_request
from tests.automations.test_module_subaccount import (
    MINTED,
    POLICY_HASH,
    SafeModule,
    balance,
    forced,
    install,
    safe_with_module,
    transfer_calldata,
)
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.automations import bare_subscription
from tests.support.relays import RELAY_ENV, funded_signer, make_chain
from vaults import module as vpm
from vaults import onchain

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.automations]

EXECUTOR = Account.from_key("0x" + f"{0xE8EC00:064x}")
FORGER = Account.from_key("0x" + f"{0xF1F1F1:064x}")
DAY = 86_400


class Routed:
    """A Safe with its module installed (a policy allowing token.transfer, the orchestrator's
    validator, EXECUTOR registered) and a subscription whose sub-account it is."""

    def __init__(self, rpc_url: str) -> None:
        self.chain: Chain = make_chain(rpc_url, poll_interval=0.1)
        self.w3 = Web3(Web3.HTTPProvider(rpc_url))
        self.token = onchain.deploy_asset(w3=self.w3, deployer=self.w3.eth.accounts[0])
        self.sm: SafeModule = safe_with_module(self.w3, self.token)
        install(self.sm, token=self.token, executor=EXECUTOR.address)
        sub = bare_subscription("module route")
        Subscription.objects.filter(pk=sub.pk).update(module_address=self.sm.module, sub_account_address=self.sm.safe)
        self.sub: Subscription = Subscription.objects.select_related("config").get(pk=sub.pk)

    def task(self, data: str, *, signer: Any = EXECUTOR, signed_data: str | None = None) -> tuple[str, ReviewedTask]:
        """A requestID and the reviewed task calling token with `data`, signed by `signer` over
        `signed_data` (by default the same data)."""
        request_id = str(uuid.uuid4())
        executable = {"callType": 0, "to": self.token, "value": "0", "data": signed_data or data}
        signature = execution_request_sign(
            signer, chain_id=self.chain.chain_id, request_id=request_id, subaccount=self.sm.safe, executable=executable
        )
        task = ReviewedTask(
            subaccount=self.sm.safe,
            executor=EXECUTOR.address,
            callType=0,
            to=self.token,
            value="0",
            data=data,
            executorSignature=signature,
        )
        return request_id, task

    def checked(self, request_id: str, task: ReviewedTask) -> ModuleRefusal | Countersigned:
        return module_check(w3=self.w3, subscription=self.sub, task=task, request_id=request_id)

    def countersigned(self, request_id: str, task: ReviewedTask) -> str:
        """executeRequest data for the task as signed, countersigned by the orchestrator's
        validator under the module's policy now: what a relayer key could send on its own."""
        req = module_request(subscription=self.sub, task=task, request_id=request_id)
        expiry = int(self.w3.eth.get_block("latest")["timestamp"]) + 300
        signature = vpm.validation_sign_with_key(req, POLICY_HASH, expiry, key=validator_key())
        return vpm.execute_request_calldata(req, canonical_signature(task["executorSignature"]), expiry, signature)

    def refused_alike(self, request_id: str, task: ReviewedTask, name: str) -> vpm.ModuleRevert:
        """The check refuses with `name`, and its message is the module's words for the revert
        of the same request forced on chain: the same error with the same arguments."""
        refused = self.checked(request_id, task)
        assert isinstance(refused, ModuleRefusal), refused
        revert = forced(self.w3, self.sm.module, self.countersigned(request_id, task))
        assert revert.name == name and refused.message == vpm.module_error_of(revert), (refused, revert)
        return revert

    def relay_refused(self, relayer: SigningKey, data: str) -> RelayTransaction:
        """`data` to the module from `relayer`, through the relayer: failed in simulation."""
        tx = relay_request(
            signer=relayer, chain=self.chain, to=self.sm.module, data=data, idempotency_key=str(uuid.uuid4())
        )
        failed = wait_until(
            lambda: RelayTransaction.objects.filter(pk=tx.pk, phase__in=(TxPhase.FAILED, TxPhase.DEAD_LETTER)).first(),
            timeout=60,
            message="the relay to fail",
        )
        assert failed.error.startswith("simulation reverted"), failed.error
        return failed


def test_the_check_names_the_modules_rule_for_forged_altered_and_over_limit_requests(anvil: str) -> None:
    routed = Routed(anvil)
    payee = Account.create().address

    forged = routed.refused_alike(*routed.task(transfer_calldata(payee, 1), signer=FORGER), "UnknownExecutor")
    assert forged.args == {"signer": FORGER.address.lower()}
    # Signed over a transfer of 1, sent as one of 1,000: the module recovers a stranger.
    altered = routed.task(transfer_calldata(payee, 1000), signed_data=transfer_calldata(payee, 1))
    assert routed.refused_alike(*altered, "UnknownExecutor").args["signer"] != EXECUTOR.address.lower()

    routed.sm.owners_execute(
        [vpm.set_spending_limit_call(module=routed.sm.module, token=routed.token, amount=10, period_seconds=DAY)]
    )
    over = routed.refused_alike(*routed.task(transfer_calldata(payee, 11)), "SpendingLimitExceeded")
    assert over.args == {"token": routed.token.lower(), "requested": 11, "remaining": 10}
    within = routed.checked(*routed.task(transfer_calldata(payee, 10)))
    assert isinstance(within, Countersigned)

    # The owners register another validator: the orchestrator's countersignature counts for nothing.
    routed.sm.owners_execute([vpm.set_validator_call(module=routed.sm.module, validator=FORGER.address)])
    assert routed.refused_alike(*routed.task(transfer_calldata(payee, 1)), "BadValidatorSignature").args == {}
    assert balance(routed.w3, routed.token, routed.sm.safe) == MINTED


def test_a_countersignature_expired_before_the_relay_is_refused_in_simulation(
    anvils: AnvilFactory, workers: Workers
) -> None:
    routed = Routed(anvils.start())
    relayer = funded_signer(routed.chain.rpc_url)
    workers.start(extra_env=RELAY_ENV)
    request_id, task = routed.task(transfer_calldata(Account.create().address, 5))
    countersigned = routed.checked(request_id, task)
    assert isinstance(countersigned, Countersigned)
    # The relay comes later than the countersignature holds (a worker was down, say).
    routed.w3.provider.make_request("evm_increaseTime", [settings.AUTOMATION_VALIDATION_TTL_SECONDS + 120])
    routed.w3.provider.make_request("evm_mine", [])
    data = module_calldata(subscription=routed.sub, task=task, request_id=request_id, countersigned=countersigned)

    failed = routed.relay_refused(relayer, data)
    off_chain = vpm.module_revert(failed.error)
    assert off_chain is not None and off_chain.name == "ValidationExpired", failed.error
    assert off_chain.args["expiry"] == countersigned.expiry
    assert relay_error(failed.error).startswith(f"ValidationExpired: {vpm.MODULE_ERRORS['ValidationExpired']}")
    assert routed.w3.eth.get_transaction_count(as_address(relayer.address)) == 0  # nothing broadcast

    revert = forced(routed.w3, routed.sm.module, data)
    assert (revert.name, revert.args["expiry"]) == ("ValidationExpired", countersigned.expiry)
    assert balance(routed.w3, routed.token, routed.sm.safe) == MINTED
    assert not vpm.request_used(routed.w3, module=routed.sm.module, request_id=request_id)


def test_a_relayer_key_calling_the_module_itself_is_refused_in_simulation_as_not_safe(
    anvils: AnvilFactory, workers: Workers
) -> None:
    routed = Routed(anvils.start())
    relayer = funded_signer(routed.chain.rpc_url)
    workers.start(extra_env=RELAY_ENV)
    module = routed.sm.module
    before = vpm.module_state(routed.w3, module)
    words = f"NotSafe: {vpm.MODULE_ERRORS['NotSafe']}"
    for call in (
        vpm.commit_policy_call(module=module, policy_hash=b"\x01" * 32, allowed=[]),
        vpm.set_spending_limit_call(module=module, token=routed.token, amount=0, period_seconds=0),
        vpm.set_operator_call(module=module, operator=relayer.address),
        vpm.set_validator_call(module=module, validator=relayer.address),
        vpm.set_executor_call(module=module, executor=relayer.address),
    ):
        failed = routed.relay_refused(relayer, call.data)
        assert vpm.module_error(failed.error) == words, failed.error
        assert forced(routed.w3, module, call.data) == vpm.ModuleRevert("NotSafe", {})
    assert routed.w3.eth.get_transaction_count(as_address(relayer.address)) == 0  # nothing broadcast
    assert vpm.module_state(routed.w3, module) == before
    assert not vpm.executor_registered(routed.w3, module=module, executor=relayer.address)
