"""A subscription whose sub-account is a Safe with the policy module enabled (docs/api.md,
"Subscriptions"): on anvil with a real beat, workers and executor server, its tasks run through the
module as one executeRequest from the relayer key; every refusal made off chain names the rule
the module reverts with when the same request is forced on chain; a relayed request is sent once
and a resend reverts RequestReplayed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError

from orchestrator.automations.models import Firing, FiringStatus, Subscription
from orchestrator.automations.selectors import validator_address
from orchestrator.automations.services.answers import ReviewedTask, Verdict
from orchestrator.automations.services.module_route import (
    Countersigned,
    ModuleRefusal,
    canonical_signature,
    module_calldata,
    module_check,
    module_request,
    refusal_of,
    validator_key,
)
from orchestrator.devtools.benchmarks.module_vaults import owners_execute
from orchestrator.devtools.processes import ManagedProcess
from relayer.models import RelayTransaction
from relayer.rpc import as_address
from relayer.services.requests import relay_request
from tests.conftest import Workers, wait_until
from tests.support.automations import LOCAL_DESTINATIONS, automation_create, beat_start, fund
from tests.support.executor_server import Answer, ExecutorServer
from tests.support.relays import make_chain
from vaults import module as vpm
from vaults import onchain
from vaults import safe as safe_lib

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.automations,
    pytest.mark.usefixtures("local_destinations"),
]

OWNERS = [Account.from_key("0x" + f"{0x5AFE00 + i:064x}") for i in range(3)]
TRANSFER = bytes.fromhex("a9059cbb")
POLICY_HASH = bytes.fromhex("bb" * 32)
MINTED = 10**9


def transfer_calldata(to: str, amount: int) -> str:
    return "0x" + (TRANSFER + abi_encode(["address", "uint256"], [as_address(to), amount])).hex()


def balance(w3: Web3, token: str, account: str) -> int:
    data = "0x70a08231" + "0" * 24 + account[2:].lower()
    return int.from_bytes(w3.eth.call({"to": as_address(token), "data": data}), "big")


@dataclass
class SafeModule:
    w3: Web3
    safe: str
    module: str

    def owners_execute(self, calls: list[safe_lib.Call]) -> None:
        """The calls as one Safe transaction signed by two owners, sent from a node account."""
        owners_execute(self.w3, self.safe, OWNERS[:2], calls)


def safe_with_module(w3: Web3, token: str) -> SafeModule:
    """A new 2-of-3 Safe holding MINTED of `token`, with a module deployed for it (not enabled)."""
    deployer = w3.eth.accounts[0]
    owners = [o.address for o in OWNERS]
    safe = safe_lib.safe_deploy_dev(w3, deployer=deployer, owners=owners, threshold=2, salt_nonce=secrets.randbits(64))
    onchain.fund_vault_account(w3=w3, asset=token, account_address=safe, assets=MINTED, eth=0)
    module = vpm.module_deploy_dev(w3, deployer=deployer, safe=safe, operator=Account.create().address)
    return SafeModule(w3, safe, module)


def install(sm: SafeModule, *, token: str, executor: str | None) -> None:
    """Enables the module with a policy allowing token.transfer, the orchestrator's validator
    and (unless None) the executor registered."""
    calls = [
        vpm.enable_module_call(safe=sm.safe, module=sm.module),
        vpm.commit_policy_call(
            module=sm.module, policy_hash=POLICY_HASH, allowed=[vpm.AllowedCall(to=token, selector=TRANSFER)]
        ),
        vpm.set_validator_call(module=sm.module, validator=validator_key().address),
    ]
    if executor is not None:
        calls.append(vpm.set_executor_call(module=sm.module, executor=executor))
    sm.owners_execute(calls)


def forced(w3: Web3, module: str, data: str) -> vpm.ModuleRevert:
    """The module's answer to `data` sent anyway: eth_call names the error, and the mined
    transaction reverts."""
    tx: Any = {"from": w3.eth.accounts[2], "to": as_address(module), "data": data}
    with pytest.raises(ContractLogicError) as caught:
        w3.eth.call(tx)
    decoded = vpm.module_revert(str(caught.value.data))
    assert decoded is not None, caught.value
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({**tx, "gas": 1_000_000}), timeout=30)
    assert receipt["status"] == 0
    return decoded


def countersigned_calldata(w3: Web3, sub: Subscription, firing: Firing) -> str:
    """executeRequest data for a firing's task as the executor signed it, countersigned by the
    orchestrator's validator now: what a relayer key could send on its own."""
    task = Verdict(**firing.workflow_run.input["verdict"]).task  # type: ignore[union-attr]
    req = module_request(subscription=sub, task=task, request_id=firing.request_id)
    expiry = int(w3.eth.get_block("latest")["timestamp"]) + 300
    policy = vpm.module_state(w3, sub.module_address).policy_hash
    signature = vpm.validation_sign_with_key(req, policy, expiry, key=validator_key())
    return vpm.execute_request_calldata(req, task["executorSignature"], expiry, signature)


@pytest.fixture
def beat(worker_env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = beat_start({**worker_env, **LOCAL_DESTINATIONS})
    yield process
    process.stop()


def test_refusals_are_the_module_errors_in_snake_case_and_signatures_go_with_v_27_or_28() -> None:
    unknown = refusal_of(vpm.ModuleRevert("UnknownExecutor", {"signer": "0xab"}))
    assert unknown == ModuleRefusal(
        "unknown_executor",
        "UnknownExecutor: the request is not signed by an executor this Safe registered (signer=0xab)",
    )
    assert refusal_of(vpm.ModuleRevert("BadValidatorSignature", {})).code == "bad_validator_signature"
    delegate = refusal_of(vpm.ModuleRevert("DelegateCallNotAllowed", {}))
    assert delegate.code == "delegatecall_refused" and delegate.message.startswith("DelegateCallNotAllowed: ")
    body = "11" * 64
    assert canonical_signature(body + "01") == canonical_signature("0x" + body + "1c") == "0x" + body + "1c"


def test_subscribing_with_a_module_checks_it_on_chain(anvil: str, server: ExecutorServer) -> None:
    make_chain(anvil)
    w3 = Web3(Web3.HTTPProvider(anvil))
    token = onchain.deploy_asset(w3=w3, deployer=w3.eth.accounts[0])
    sm = safe_with_module(w3, token)
    automation = automation_create(server, source={"type": "INTERVAL", "value": 3600})

    def refused(**body: Any) -> str:
        fields = {"registryID": automation.registry, "chainId": 31337, **body}
        response = automation.client.post("/v1/subscriptions", fields, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["error"]["code"] == "invalid"
        return str(response.json()["error"]["fields"]["moduleAddress"])

    assert "has not enabled" in refused(subAccountAddress=sm.safe, moduleAddress=sm.module)
    assert "no VaultPolicyModule" in refused(subAccountAddress=sm.safe, moduleAddress=token)
    stranger = Account.create().address
    assert "belongs to the Safe" in refused(subAccountAddress=stranger, moduleAddress=sm.module)
    assert not Subscription.objects.exists()

    install(sm, token=token, executor=server.executor.account.address)
    sub = automation.subscribe(sub_account=sm.safe, moduleAddress=sm.module.lower())
    assert (sub["executionPath"], sub["moduleAddress"]) == ("module", sm.module)
    assert sub["validatorAddress"] == validator_address() == validator_key().address
    assert automation.client.get(f"/v1/subscriptions/{sub['id']}").json() == sub
    direct = automation.subscribe(sub_account=stranger)
    assert (direct["executionPath"], direct["moduleAddress"], direct["validatorAddress"]) == ("direct", None, None)


def test_tasks_run_through_the_module_and_refusals_name_its_rules(
    anvil: str, server: ExecutorServer, workers: Workers, beat: ManagedProcess
) -> None:
    make_chain(anvil)
    w3 = Web3(Web3.HTTPProvider(anvil))
    token = onchain.deploy_asset(w3=w3, deployer=w3.eth.accounts[0])
    other_token = onchain.deploy_asset(w3=w3, deployer=w3.eth.accounts[0])
    recipient = Account.create().address
    executor = server.executor
    registered, unregistered = safe_with_module(w3, token), safe_with_module(w3, token)
    install(registered, token=token, executor=executor.account.address)
    install(unregistered, token=token, executor=None)  # the Safe never registered the executor

    def answer(body: dict[str, Any]) -> Answer:
        count, safe = body["context"]["executionCount"], body["params"]["subAccountAddress"]
        if safe == unregistered.safe and count == 0:
            return executor.task(body, to=token, data=transfer_calldata(recipient, 7))
        if safe != registered.safe or count > 2:
            return executor.skip(body)
        if count == 0:
            return executor.task(body, to=token, data=transfer_calldata(recipient, 1000))
        if count == 1:  # a target the committed policy does not allow
            return executor.task(body, to=other_token, data=transfer_calldata(recipient, 1))
        return executor.task(body, to=token, data=transfer_calldata(recipient, 1), call_type=1)

    executor.on_trigger = answer
    automation = automation_create(server, source={"type": "INTERVAL", "value": 2})
    relayer = automation.config["relayerAddress"][0]
    fund(anvil, relayer)
    sub = automation.subscribe(sub_account=registered.safe, moduleAddress=registered.module)
    stranger = automation.subscribe(sub_account=unregistered.safe, moduleAddress=unregistered.module)
    workers.start(extra_env=LOCAL_DESTINATIONS)

    def firings(sub_id: str) -> list[Firing]:
        return list(
            Firing.objects.filter(subscription_id=sub_id)
            .exclude(status=FiringStatus.PENDING)
            .select_related("workflow_run", "relay_transaction")
            .order_by("created_at")
        )

    wait_until(
        lambda: len(executor.executed()) >= 4,
        timeout=90,
        message="four tasks reported to /kernel/executed",
    )
    # A dispatch may make several firings at one time: they are told apart by what happened.
    done = [f for f in firings(sub["id"]) if f.status != FiringStatus.SKIPPED]
    assert sorted(f.status for f in done) == [FiringStatus.REFUSED, FiringStatus.REFUSED, FiringStatus.RELAYED], [
        (f.status, f.reason) for f in done
    ]
    relayed = next(f for f in done if f.status == FiringStatus.RELAYED)
    refusals = {f.reason.split(":")[0]: f for f in done if f.status == FiringStatus.REFUSED}
    (unknown,) = [f for f in firings(stranger["id"]) if f.status == FiringStatus.REFUSED]

    # Relayed: one transaction from the relayer key to the module; the Safe's tokens moved.
    receipt = w3.eth.get_transaction_receipt(relayed.output_tx_hash)
    assert receipt["status"] == 1 and (receipt["from"], receipt["to"]) == (relayer, registered.module)
    assert RelayTransaction.objects.filter(idempotency_key=f"firing:{relayed.pk}").count() == 1
    assert balance(w3, token, registered.safe) == MINTED - 1000 and balance(w3, token, recipient) == 1000
    entries = {e["id"]: e for e in automation.logs(sub["id"], limit=100)}
    assert entries[str(relayed.pk)]["metadata"]["outcome"] == {"status": "relayed", "reason": ""}
    assert entries[str(relayed.pk)]["outputTxHash"] == relayed.output_tx_hash

    # Each refusal names the module's rule, and the same request forced on chain reverts with it.
    reports = {r.body["executionRequestID"]: r.body for r in executor.executed()}
    expected = [
        (refusals["target_not_allowed"], "target_not_allowed", "TargetNotAllowed", registered),
        (refusals["delegatecall_refused"], "delegatecall_refused", "DelegateCallNotAllowed", registered),
        (unknown, "unknown_executor", "UnknownExecutor", unregistered),
    ]
    for firing, code, name, sm in expected:
        error = reports[firing.request_id]["error"]
        assert (error["type"], error["message"].split(":")[0]) == (code, name), error
        assert firing.reason.startswith(f"{code}: {name}: ")
        assert firing.relay_transaction is None
        subscription = Subscription.objects.get(pk=firing.subscription_id)
        assert forced(w3, sm.module, countersigned_calldata(w3, subscription, firing)).name == name
    assert balance(w3, token, unregistered.safe) == MINTED
    assert not RelayTransaction.objects.exclude(pk=relayed.relay_transaction_id).filter(signer__address=relayer)

    # Replay: the relay step again sends the same bytes under the same key, so the same single
    # transaction; the bytes resent by anyone revert RequestReplayed, and the check says so too.
    tx = relayed.relay_transaction
    assert tx is not None
    model = Subscription.objects.get(pk=sub["id"])
    run = relayed.workflow_run
    assert run is not None
    task: ReviewedTask = Verdict(**run.input["verdict"]).task
    countersigned = Countersigned(**run.outputs["check"]["module"])
    again = module_calldata(subscription=model, task=task, request_id=relayed.request_id, countersigned=countersigned)
    assert again == tx.data
    same = relay_request(
        signer=tx.signer, chain=tx.chain, to=tx.to, value=0, data=again, idempotency_key=f"firing:{relayed.pk}"
    )
    assert same.pk == tx.pk and RelayTransaction.objects.filter(idempotency_key=f"firing:{relayed.pk}").count() == 1
    assert forced(w3, registered.module, tx.data).name == "RequestReplayed"
    checked = module_check(w3=w3, subscription=model, task=task, request_id=relayed.request_id)
    assert isinstance(checked, ModuleRefusal) and checked.code == "request_replayed"
    assert checked.message.startswith("RequestReplayed: ")
    assert balance(w3, token, recipient) == 1000
