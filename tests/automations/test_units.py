"""Automation services on the real database, without a worker: the catch-up rule, concurrent
dispatchers, answer review, delivery limits and destinations at call time, and the logs API."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from eth_account import Account

from orchestrator.automations.models import Firing, FiringStatus, Subscription
from orchestrator.automations.services.answers import answer_review
from orchestrator.automations.services.delivery import firings_deliver
from orchestrator.automations.services.firings import delivery_chunks, intervals_dispatch, next_due
from orchestrator.automations.typed_data import hmac_hex, webhook_authentic, webhook_signature
from tests.support.automations import Automation, api_client, automation_create
from tests.support.executor_server import ExecutorServer

pytestmark = pytest.mark.usefixtures("local_destinations")

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def interval(server: ExecutorServer, seconds: int = 30, **fields: Any) -> Automation:
    return automation_create(server, source={"type": "INTERVAL", "value": seconds}, **fields)


def test_next_due_keeps_the_cadence_and_fires_once_after_downtime() -> None:
    assert next_due(T0, 30, T0) == T0 + timedelta(seconds=30)
    assert next_due(T0, 30, T0 + timedelta(seconds=29)) == T0 + timedelta(seconds=30)
    # Down for 10 minutes: one firing now (for T0), then back on the :00/:30 grid.
    assert next_due(T0, 30, T0 + timedelta(minutes=10, seconds=5)) == T0 + timedelta(minutes=10, seconds=30)
    assert next_due(T0, 30, T0 + timedelta(seconds=30)) == T0 + timedelta(seconds=60)


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_at_once_fire_every_due_subscription_exactly_once(server: ExecutorServer) -> None:
    automation = interval(server)
    for _ in range(300):
        automation.subscribe()
    Subscription.objects.update(next_run_at=timezone.now() - timedelta(seconds=1))
    handed: list[str] = []
    counts: list[int] = []

    def dispatcher() -> None:
        try:
            counts.append(intervals_dispatch(deliver=lambda ids, token, eta: handed.extend(ids)))
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 300 == Firing.objects.count()
    assert sorted(handed) == sorted(str(pk) for pk in Firing.objects.values_list("pk", flat=True))
    assert Firing.objects.values("subscription").distinct().count() == 300
    assert not Subscription.objects.filter(next_run_at__lte=timezone.now()).exists()
    assert intervals_dispatch(deliver=lambda ids, token, eta: None) == 0


@pytest.mark.django_db
def test_the_first_firing_of_a_subscription_has_an_empty_context(server: ExecutorServer) -> None:
    automation = interval(server, 10)
    sub = automation.subscribe()
    Subscription.objects.update(next_run_at=timezone.now())
    intervals_dispatch(deliver=lambda ids, token, eta: None)
    firing = Firing.objects.get(subscription_id=sub["id"])
    assert firing.request["context"] == {"executionCount": 0, "prevExecutionAt": None, "prevExecutionID": None}
    assert firing.request["signature"] == hmac_hex(automation.hmac_key, firing.request_id)
    assert firing.request["params"]["subscription"]["duration"] == 10
    stored = Subscription.objects.get(pk=sub["id"])
    assert stored.execution_count == 1 and stored.prev_execution_id == firing.request_id


@pytest.mark.django_db(transaction=True)
def test_a_subscription_due_soon_is_claimed_ahead_and_sent_no_earlier_than_due(server: ExecutorServer) -> None:
    automation = interval(server)
    sub = automation.subscribe()
    due = timezone.now() + timedelta(seconds=1)
    Subscription.objects.filter(pk=sub["id"]).update(next_run_at=due)
    handed: list[tuple[list[str], str, Any]] = []
    assert intervals_dispatch(deliver=lambda ids, token, eta: handed.append((ids, token, eta))) == 1
    [(ids, token, eta)] = handed
    assert eta == due  # the delivery task is scheduled for the due time
    firings_deliver(firing_ids=ids, token=token)  # even run early, it sends nothing before
    assert server.executor.triggers()[0].at >= due.timestamp()


def test_delivery_chunks_group_firings_due_close_together() -> None:
    due = [(f"f{i}", T0 + timedelta(milliseconds=30 * i)) for i in range(10)]
    chunks = delivery_chunks(list(reversed(due)), size=3, window=timedelta(milliseconds=100))
    assert [ids for ids, _ in chunks] == [["f0", "f1", "f2"], ["f3", "f4", "f5"], ["f6", "f7", "f8"], ["f9"]]
    assert [when for _, when in chunks] == [due[2][1], due[5][1], due[8][1], due[9][1]]
    spread = [(f"g{i}", T0 + timedelta(milliseconds=150 * i)) for i in range(3)]
    assert len(delivery_chunks(spread, size=100, window=timedelta(milliseconds=100))) == 3


# --- answer review --------------------------------------------------------------------------


@pytest.fixture
def reviewed(server: ExecutorServer, db: None) -> tuple[Subscription, ExecutorServer, str]:
    automation = interval(server)
    sub = Subscription.objects.select_related("config__executor").get(pk=automation.subscribe()["id"])
    return sub, server, automation.hmac_key


def review(sub: Subscription, key: str, answer: Any, request_id: str = "r-1") -> tuple[str, str]:
    verdict = answer_review(answer=answer, request_id=request_id, subscription=sub, hmac_key=key)
    return verdict.outcome, verdict.code


def test_review_accepts_a_signed_skip_and_a_signed_task(reviewed: tuple[Subscription, ExecutorServer, str]) -> None:
    sub, server, key = reviewed
    body = {"requestID": "r-1", "params": {"subAccountAddress": sub.sub_account_address, "chainID": 31337}}
    assert review(sub, key, server.executor.skip(body)[1]) == ("skip", "")
    target = Account.create().address
    assert review(sub, key, server.executor.task(body, to=target, value="7")[1]) == ("task", "")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda a: "not an object", "malformed_answer"),
        (lambda a: a | {"requestID": "r-2"}, "wrong_request_id"),
        (lambda a: a | {"skip": "no"}, "malformed_answer"),
        (lambda a: a | {"signature": "00" * 32}, "bad_hmac"),
        (lambda a: {k: v for k, v in a.items() if k != "signature"}, "bad_hmac"),
        (lambda a: a | {"task": None}, "malformed_answer"),
        (lambda a: _executable(a, callType=2), "malformed_answer"),
        (lambda a: _executable(a, to="0x1234"), "malformed_answer"),
        (lambda a: _executable(a, value="-1"), "malformed_answer"),
        (lambda a: _executable(a, value="\u0667"), "malformed_answer"),  # Arabic-Indic 7: int() takes it
        (lambda a: _executable(a, value=str(2**256)), "malformed_answer"),
        (lambda a: _executable(a, data="0xabc"), "malformed_answer"),
        (lambda a: _executable(a, value="8"), "bad_executor_signature"),  # signed for 7
        (lambda a: a | {"task": a["task"] | {"subaccount": Account.create().address}}, "wrong_subaccount"),
        (lambda a: a | {"task": a["task"] | {"executor": Account.create().address}}, "wrong_executor"),
    ],
)
def test_review_refuses_with_a_reason(
    reviewed: tuple[Subscription, ExecutorServer, str], change: Any, code: str
) -> None:
    sub, server, key = reviewed
    body = {"requestID": "r-1", "params": {"subAccountAddress": sub.sub_account_address, "chainID": 31337}}
    answer = server.executor.task(body, to=Account.create().address, value="7")[1]
    outcome, refused = review(sub, key, change(answer))
    assert (outcome, refused) == ("refused", code)


def _executable(answer: dict[str, Any], **changes: Any) -> dict[str, Any]:
    task = answer["task"]
    return answer | {"task": task | {"executable": task["executable"] | changes}}


def test_review_without_verify_payload_needs_no_hmac(server: ExecutorServer, db: None) -> None:
    automation = interval(server, verify=False)
    sub = Subscription.objects.select_related("config__executor").get(pk=automation.subscribe()["id"])
    assert review(sub, "", {"skip": True, "requestID": "r-1", "task": None}) == ("skip", "")


def test_autosign_signs_for_the_executor_when_the_signature_is_empty(server: ExecutorServer, db: None) -> None:
    automation = interval(server, autosign=True)
    sub = Subscription.objects.select_related("config__executor", "config__executor_key").get(
        pk=automation.subscribe()["id"]
    )
    executable = {"callType": 0, "to": Account.create().address, "value": "0", "data": "0x"}
    answer = {
        "skip": False,
        "requestID": "r-1",
        "task": {
            "subaccount": sub.sub_account_address,
            "executor": automation.config["executorAddress"],
            "executorSignature": "",
            "executable": executable,
        },
        "signature": hmac_hex(automation.hmac_key, "r-1:"),
    }
    verdict = answer_review(answer=answer, request_id="r-1", subscription=sub, hmac_key=automation.hmac_key)
    assert verdict.outcome == "task" and verdict.task["executorSignature"].startswith("0x")


# --- delivery limits and destinations -------------------------------------------------------


def _fire_now(automation: Automation) -> Firing:
    sub = automation.subscribe()
    Subscription.objects.filter(pk=sub["id"]).update(next_run_at=timezone.now())
    tokens: list[tuple[list[str], str]] = []
    intervals_dispatch(deliver=lambda ids, token, eta: tokens.append((ids, token)))
    ids, token = tokens[0]
    firings_deliver(firing_ids=ids, token=token)
    return Firing.objects.get(subscription_id=sub["id"])


@pytest.mark.django_db(transaction=True)
def test_an_answer_over_the_size_limit_is_refused(server: ExecutorServer, settings: Any) -> None:
    settings.AUTOMATION_HOOK_MAX_BYTES = 2048
    server.executor.on_trigger = lambda body: (200, {"skip": True, "pad": "x" * 5000}, 0)
    firing = _fire_now(interval(server))
    assert firing.status == FiringStatus.REFUSED
    assert "larger than 2048 bytes" in firing.reason


@pytest.mark.django_db(transaction=True)
def test_a_destination_refused_at_call_time_is_not_called(server: ExecutorServer, settings: Any) -> None:
    automation = interval(server)
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = False  # e.g. the name now resolves to 127.0.0.1
    firing = _fire_now(automation)
    assert server.executor.triggers() == []
    assert firing.status == FiringStatus.PENDING and firing.next_attempt_at is not None
    assert "destination refused" in firing.reason and "non-public address" in firing.reason


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_subscription_is_not_called_even_if_already_fired(server: ExecutorServer) -> None:
    automation = interval(server)
    sub = automation.subscribe()
    Subscription.objects.filter(pk=sub["id"]).update(next_run_at=timezone.now())
    tokens: list[tuple[list[str], str]] = []
    intervals_dispatch(deliver=lambda ids, token, eta: tokens.append((ids, token)))
    assert automation.client.post(f"/v1/subscriptions/{sub['id']}/cancel").status_code == 200
    firings_deliver(firing_ids=tokens[0][0], token=tokens[0][1])
    assert server.executor.triggers() == []
    firing = Firing.objects.get(subscription_id=sub["id"])
    assert firing.status == FiringStatus.SKIPPED and "cancelled" in firing.reason


# --- the logs API ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_logs_are_newest_first_paged_and_private(server: ExecutorServer) -> None:
    automation = interval(server)
    sub = automation.subscribe()
    for n in range(15):
        Subscription.objects.filter(pk=sub["id"]).update(next_run_at=timezone.now() - timedelta(seconds=60 - n))
        intervals_dispatch(deliver=lambda ids, token, eta: None)
    everything = automation.logs(sub["id"], limit=100)
    assert len(everything) == 15
    counts = [e["metadata"]["request"]["context"]["executionCount"] for e in everything]
    assert counts == list(range(14, -1, -1))
    assert len(automation.logs(sub["id"])) == 10  # the default limit
    page = automation.logs(sub["id"], offset=10, limit=3)
    assert [e["id"] for e in page] == [e["id"] for e in everything[10:13]]
    entry = everything[0]
    assert set(entry) == {
        "metadata",
        "message",
        "createdAt",
        "subAccountAddress",
        "chainId",
        "id",
        "subId",
        "outputTxHash",
    }
    assert entry["metadata"]["outcome"] == {"status": "pending", "reason": ""}
    assert entry["metadata"]["response"] is None and entry["metadata"]["postExecutionState"] is None

    for query in ({"limit": 101}, {"limit": -1}, {"offset": -1}, {"limit": "ten"}):
        response = automation.client.get(f"/v1/{sub['id']}/logs", query)
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "invalid"
    stranger = api_client()
    for path in (f"/v1/{sub['id']}/logs", "/v1/00000000-0000-0000-0000-000000000000/logs", "/v1/nope/logs"):
        response = stranger.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    anonymous = automation.client.__class__()
    assert anonymous.get(f"/v1/{sub['id']}/logs").status_code == 401


@pytest.mark.parametrize("stamp", ["²", "\u0661\u0667" + "\u0660" * 8, "-5", ""])
def test_a_webhook_timestamp_that_is_not_ascii_digits_is_not_authentic_and_raises_nothing(stamp: str) -> None:
    """'²'.isdigit() is true and int("²") raises: an executor's check must answer False instead."""
    body = b"{}"
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": stamp,
        "webhook-signature": webhook_signature("k", msg_id="msg_1", timestamp=stamp, body=body),
    }
    assert webhook_authentic("k", headers, body) is False
    assert webhook_authentic("k", headers, body, max_age=None) is True  # the signature itself matches
