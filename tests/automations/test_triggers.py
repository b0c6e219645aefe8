"""Automations end to end (issue 4): a real beat fires INTERVAL triggers, a real worker calls a
real executor server, answers are checked, tasks are relayed on anvil and reported to
/kernel/executed, and the logs API shows every firing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from eth_account import Account
from web3 import Web3

from orchestrator.automations.models import Firing, FiringStatus, ReportStatus, Subscription
from orchestrator.automations.services.subscriptions import subscription_cancel
from orchestrator.automations.typed_data import hmac_hex
from orchestrator.devtools.processes import ManagedProcess
from relayer.keys import master_keys
from relayer.models import RelayTransaction
from tests.conftest import Workers, wait_until
from tests.support.automations import LOCAL_DESTINATIONS, SUBSCRIPTION_KEYS, automation_create, beat_start, fund
from tests.support.executor_server import Executor, ExecutorServer
from tests.support.relays import b64_key, make_chain, run_command
from vaults.onchain import approve_calldata, deploy_asset

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.automations,
    pytest.mark.usefixtures("local_destinations"),
]

ZERO_HASH = "0x" + "0" * 64
TRIGGER_KEYS = {"context", "params", "requestID", "signature", "trigger"}


@pytest.fixture
def beat(worker_env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = beat_start({**worker_env, **LOCAL_DESTINATIONS})
    yield process
    process.stop()


def start_workers(workers: Workers, **env: str) -> ManagedProcess:
    return workers.start(extra_env={**LOCAL_DESTINATIONS, **env})


def by_count(answers: dict[int, Any], default: Any) -> Any:
    """An on_trigger that answers by the firing's executionCount."""
    return lambda body: answers.get(body["context"]["executionCount"], default)(body)


def chain_with_token(anvil: str) -> tuple[Web3, str]:
    """The anvil chain configured, with a fresh ERC-20 token on it."""
    make_chain(anvil)
    w3 = Web3(Web3.HTTPProvider(anvil))
    return w3, deploy_asset(w3=w3, deployer=w3.eth.accounts[0])


def test_interval_firings_are_signed_answered_relayed_reported_and_logged(
    anvil: str, server: ExecutorServer, workers: Workers, beat: ManagedProcess
) -> None:
    w3, token = chain_with_token(anvil)
    spender = Account.create().address
    executor = server.executor
    executor.on_trigger = by_count(
        {1: lambda body: executor.task(body, to=token, data=approve_calldata(spender, 500_000))}, executor.skip
    )
    executor.on_executed = lambda body: (200, {"log": {"seen": body["executionRequestID"]}}, 0)
    automation = automation_create(server, source={"type": "INTERVAL", "value": 2})
    fund(anvil, *automation.config["relayerAddress"])
    sub = automation.subscribe(tokenLimits={token: "1"})
    start_workers(workers)

    wait_until(lambda: len(executor.executed()) == 1, timeout=60, message="the post-execution hook")
    wait_until(lambda: len(executor.triggers()) >= 3, timeout=30, message="a third trigger")

    triggers = executor.triggers()
    for received in triggers:
        assert set(received.body) == TRIGGER_KEYS
        assert received.body_signature_ok and received.webhook_signature_ok
        assert received.verifying_signer == automation.config["verifyingAddress"]
        assert received.headers["x-request-id"] == received.body["requestID"] == received.headers["webhook-id"]
        assert received.body["trigger"]["type"] == "INTERVAL"
        assert set(received.body["params"]["subscription"]) == SUBSCRIPTION_KEYS
        assert received.body["params"]["executorID"] == automation.registry
        assert received.body["params"]["chainID"] == 31337
    first, second = triggers[0].body, triggers[1].body
    assert first["context"] == {"executionCount": 0, "prevExecutionAt": None, "prevExecutionID": None}
    assert second["context"]["executionCount"] == 1
    assert second["context"]["prevExecutionID"] == first["requestID"]

    executed = executor.executed()[0]
    assert executed.body["executionRequestID"] == second["requestID"]
    assert executed.body["successful"] is True
    assert executed.body["signature"] == hmac_hex(automation.hmac_key, executed.body["requestID"])
    assert executed.body_signature_ok and executed.webhook_signature_ok
    tx_hash = executed.body["relayResponse"]["outputTransactionHash"]
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1
    allowance = w3.eth.call(
        {"to": token, "data": "0xdd62ed3e" + "0" * 24 + receipt["from"][2:] + "0" * 24 + spender[2:]}
    )
    assert int.from_bytes(allowance, "big") == 500_000

    wait_until(
        lambda: Firing.objects.filter(request_id=second["requestID"], report_status=ReportStatus.DELIVERED).exists(),
        timeout=20,
        message="the report recorded",
    )
    logs = automation.logs(sub["id"], limit=100)
    assert [e["createdAt"] for e in logs] == sorted((e["createdAt"] for e in logs), reverse=True)
    entries = {e["metadata"]["request"]["requestID"]: e for e in logs}
    relayed = entries[second["requestID"]]
    assert relayed["metadata"]["request"] == second
    assert relayed["metadata"]["outcome"] == {"status": "relayed", "reason": ""}
    assert relayed["outputTxHash"] == tx_hash
    assert relayed["metadata"]["postExecutionState"] == {"seen": second["requestID"]}
    assert relayed["metadata"]["response"]["task"]["executable"]["to"] == token
    skipped = entries[first["requestID"]]
    assert skipped["metadata"]["outcome"]["status"] == "skipped"
    assert skipped["outputTxHash"] == ZERO_HASH and skipped["metadata"]["postExecutionState"] is None
    assert skipped["subId"] == sub["id"] and skipped["chainId"] == 31337 and skipped["message"] == "trigger"

    scrape = Client().get("/metrics").content.decode()
    assert 'automation_trigger_firings_total{outcome="relayed",trigger="INTERVAL"} 1.0' in scrape
    assert 'automation_post_execution_reports_total{outcome="delivered"} 1.0' in scrape
    assert "automation_trigger_lateness_seconds_count" in scrape and "automation_hook_latency_seconds_bucket" in scrape

    response = automation.client.post(f"/v1/subscriptions/{sub['id']}/cancel", format="json")
    assert response.status_code == 200 and response.json()["status"] == 3
    time.sleep(1.5)  # a call already on the wire may still land
    seen = len(executor.triggers())
    time.sleep(5)  # two more intervals
    assert len(executor.triggers()) == seen


def test_refused_answers_are_logged_reported_and_never_relayed(
    anvil: str, server: ExecutorServer, workers: Workers, beat: ManagedProcess
) -> None:
    _, token = chain_with_token(anvil)
    executor = server.executor
    approve = approve_calldata(executor.account.address, 400_000)
    executor.on_trigger = by_count(
        {
            0: lambda body: executor.task(body, to=token, data=approve, hmac_key="0" * 64),
            1: lambda body: executor.task(body, to=token, data=approve, signer=Account.create()),
            2: lambda body: executor.task(body, to=token, data=approve_calldata(token, 2_000_000)),
            3: lambda body: (200, b"<html>not json</html>", 0),
            4: lambda body: executor.task(body, to=token, data=approve, call_type=1),
        },
        executor.skip,
    )
    executor.on_executed = lambda body: (404, None, 0)
    automation = automation_create(server, source={"type": "INTERVAL", "value": 1})
    sub = automation.subscribe(tokenLimits={token: "1"})
    start_workers(workers)

    wait_until(lambda: len(executor.executed()) >= 5, timeout=60, message="five post-execution hooks")
    subscription_cancel(subscription=Subscription.objects.get(pk=sub["id"]))
    reasons = {r.body["executionRequestID"]: r.body["error"]["type"] for r in executor.executed()}
    assert all(not r.body["successful"] for r in executor.executed())
    by_count_request = {t.body["context"]["executionCount"]: t.body["requestID"] for t in executor.triggers()}
    expected = [
        "bad_hmac",
        "bad_executor_signature",
        "token_limit_exceeded",
        "malformed_answer",
        "delegatecall_refused",
    ]
    assert [reasons[by_count_request[n]] for n in range(5)] == expected
    wait_until(
        lambda: Firing.objects.filter(subscription_id=sub["id"], report_status=ReportStatus.SKIPPED).count() >= 5,
        timeout=20,
        message="the 404s recorded as skipped reports",
    )
    logs = {e["metadata"]["request"]["requestID"]: e for e in automation.logs(sub["id"], limit=100)}
    for n, code in enumerate(expected):
        outcome = logs[by_count_request[n]]["metadata"]["outcome"]
        assert outcome["status"] == "refused" and outcome["reason"].startswith(code), outcome
        assert logs[by_count_request[n]]["outputTxHash"] == ZERO_HASH
    assert not RelayTransaction.objects.filter(requested_by_kind="firing").exists()


def test_an_executor_that_fails_is_retried_then_given_up_and_nothing_is_lost(
    anvil: str, server: ExecutorServer, workers: Workers, beat: ManagedProcess
) -> None:
    make_chain(anvil)
    executor = server.executor
    tries: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(body: dict[str, Any]) -> Any:
        with lock:
            tries[body["requestID"]] = tries.get(body["requestID"], 0) + 1
            attempt = tries[body["requestID"]]
        count = body["context"]["executionCount"]
        if count == 0 and attempt == 1:
            return 500, {"error": "busy"}, 0
        if count == 1 and attempt == 1:
            return 200, None, 3  # slower than the 1 s timeout
        if count == 2:
            return 503, None, 0  # always
        if count == 3:
            return 404, None, 0  # final: not retried
        return executor.skip(body)

    executor.on_trigger = flaky
    automation = automation_create(server, source={"type": "INTERVAL", "value": 2})
    sub = automation.subscribe()
    gone = ExecutorServer(Executor())
    unreachable = automation_create(gone, source={"type": "INTERVAL", "value": 2})
    gone.httpd.server_close()  # nothing listens there any more: connection refused
    dead_sub = unreachable.subscribe()
    start_workers(
        workers,
        AUTOMATION_HOOK_TIMEOUT_SECONDS="1",
        AUTOMATION_HOOK_MAX_ATTEMPTS="3",
        AUTOMATION_HOOK_RETRY_BASE_SECONDS="0.5",
        AUTOMATION_HOOK_RETRY_MAX_SECONDS="1",
    )

    def settled(sub_id: str, n: int) -> list[Firing]:
        done = list(Firing.objects.filter(subscription_id=sub_id, next_attempt_at__isnull=True).order_by("due_at"))
        return done if len(done) >= n else []

    firings = wait_until(lambda: settled(sub["id"], 5), timeout=90, message="five settled firings")
    outcomes = [(f.status, f.attempts) for f in firings[:5]]
    assert outcomes[0] == (FiringStatus.SKIPPED, 2)  # 500, then skip
    assert outcomes[1] == (FiringStatus.SKIPPED, 2)  # timeout, then skip
    assert outcomes[2] == (FiringStatus.FAILED, 3)  # 503 every time: given up
    assert outcomes[3] == (FiringStatus.FAILED, 1)  # 404: final at once
    assert outcomes[4] == (FiringStatus.SKIPPED, 1)  # the worker is not stuck
    assert "HTTP 503" in firings[2].reason and "404" in firings[3].reason

    dead = wait_until(lambda: settled(dead_sub["id"], 1), timeout=60, message="the unreachable executor given up")
    assert dead[0].status == FiringStatus.FAILED and dead[0].attempts == 3
    due_times = list(Firing.objects.filter(subscription_id=sub["id"]).values_list("due_at", flat=True))
    assert len(due_times) == len(set(due_times))


def test_a_worker_killed_after_the_call_loses_nothing_and_records_once(
    anvil: str, server: ExecutorServer, workers: Workers, beat: ManagedProcess, tmp_path: Any
) -> None:
    make_chain(anvil)
    executor = server.executor
    executor.on_trigger = executor.skip
    automation = automation_create(server, source={"type": "INTERVAL", "value": 2})
    sub = automation.subscribe()
    env = {"AUTOMATION_DELIVERY_LEASE_SECONDS": "3", "FAILPOINTS_DIR": str(tmp_path)}
    # The pool process that makes the first call dies before recording it (SIGKILL); the worker
    # replaces it, and the sweep hands the firing on once its lease has run out.
    start_workers(workers, FAILPOINTS="automations.after_hook", **env)
    wait_until(lambda: (tmp_path / "automations.after_hook").exists(), timeout=30, message="the failpoint")
    first = executor.triggers()[0].body["requestID"]
    wait_until(
        lambda: Firing.objects.filter(request_id=first, status=FiringStatus.SKIPPED).exists(),
        timeout=60,
        message="the interrupted firing delivered again and recorded",
    )
    wait_until(lambda: Firing.objects.filter(subscription_id=sub["id"]).count() >= 4, timeout=30, message="more")
    subscription_cancel(subscription=Subscription.objects.get(pk=sub["id"]))
    interrupted = Firing.objects.get(request_id=first)
    assert interrupted.attempts == 2
    assert [t.body["requestID"] for t in executor.triggers()].count(first) == 2  # same requestID: dedupable
    keys = list(Firing.objects.filter(subscription_id=sub["id"]).values_list("key", flat=True))
    assert len(keys) == len(set(keys))
    assert len(automation.logs(sub["id"], limit=100)) == len(keys)


def test_two_beats_fire_each_due_time_once(
    anvil: str, server: ExecutorServer, workers: Workers, beat: ManagedProcess, worker_env: dict[str, str]
) -> None:
    make_chain(anvil)
    executor = server.executor
    executor.on_trigger = executor.skip
    automation = automation_create(server, source={"type": "INTERVAL", "value": 1})
    subs = [automation.subscribe() for _ in range(25)]
    second_beat = beat_start({**worker_env, **LOCAL_DESTINATIONS})
    try:
        start_workers(workers)
        time.sleep(8)
    finally:
        second_beat.stop()
    for sub in subs:
        subscription_cancel(subscription=Subscription.objects.get(pk=sub["id"]))
    time.sleep(2)
    for sub in subs:
        due = list(Firing.objects.filter(subscription_id=sub["id"]).values_list("due_at", flat=True))
        assert len(due) >= 4, "it fired"
        assert len(due) == len(set(due)), "no due time fired twice"
    received = [t.body["requestID"] for t in executor.triggers()]
    assert len(received) == len(set(received)), "no hook sent twice"
    assert Firing.objects.count() >= len(received)


def test_after_a_master_key_rotation_and_the_old_key_dropped_triggers_still_sign_and_relay(
    anvil: str, server: ExecutorServer, workers: Workers, beat: ManagedProcess, settings: Any
) -> None:
    """Issue 14, item 3: the runbook (docs/relayer.md, "Keys"): new master key in front, rotate,
    drop the old one. Workers that know only the new key sign the config's triggers with its HMAC
    key, check the answer's, and relay the task with the config's relayer key."""

    def master(raw: str) -> None:
        settings.KEY_MASTER_KEYS = raw
        master_keys.cache_clear()

    old, new = b64_key(), b64_key()
    master(f"1:{old}")
    try:
        w3, token = chain_with_token(anvil)
        spender = Account.create().address
        executor = server.executor
        executor.on_trigger = lambda body: executor.task(body, to=token, data=approve_calldata(spender, 7))
        automation = automation_create(server, source={"type": "INTERVAL", "value": 2})
        fund(anvil, *automation.config["relayerAddress"])

        master(f"2:{new},1:{old}")
        out, _ = run_command("keys", "rotate-master")
        assert "config HMAC keys: 1 re-sealed" in out and "signing keys: 2 re-sealed" in out
        master(f"2:{new}")
        automation.subscribe(tokenLimits={token: "1"})
        start_workers(workers, KEY_MASTER_KEYS=f"2:{new}")

        wait_until(lambda: executor.executed(), timeout=60, message="the post-execution hook")
    finally:
        master_keys.cache_clear()
    trigger, executed = executor.triggers()[0], executor.executed()[0]
    assert trigger.body_signature_ok and trigger.webhook_signature_ok
    assert trigger.verifying_signer == automation.config["verifyingAddress"]  # the rotated verifying key
    assert executed.body["successful"] is True and executed.body_signature_ok
    receipt = w3.eth.get_transaction_receipt(executed.body["relayResponse"]["outputTransactionHash"])
    assert receipt["status"] == 1 and receipt["from"] in automation.config["relayerAddress"]
