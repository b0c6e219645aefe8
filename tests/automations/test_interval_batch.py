"""The INTERVAL dispatch batch written with tuples and arrays (services/interval_batch.py): the
body it stores is the one firing_new builds, a due time already fired is not fired again, and a
dispatcher that dies mid-batch leaves everything to the next one."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from orchestrator.automations.models import Firing, SourceType, Subscription
from orchestrator.automations.selectors import validator_address
from orchestrator.automations.services.firings import firing_new, intervals_dispatch, next_due
from orchestrator.automations.services.interval_batch import interval_batch_fire
from orchestrator.automations.services.module_route import validator_key
from orchestrator.automations.typed_data import hmac_hex
from orchestrator.automations.wire import rfc3339
from tests.support.automations import Automation, automation_create
from tests.support.executor_server import ExecutorServer

pytestmark = [pytest.mark.usefixtures("local_destinations"), pytest.mark.django_db]


def interval(server: ExecutorServer, seconds: int = 30) -> Automation:
    return automation_create(server, source={"type": "INTERVAL", "value": seconds})


def _expected_body(sub_id: str, hmac_key: str) -> dict[str, Any]:
    """What the ORM path (firing_new, still used for FILTER firings) builds for this row now."""
    sub = Subscription.objects.select_related("config__executor", "config__executor_key").get(pk=sub_id)
    assert sub.next_run_at is not None
    firing = firing_new(
        subscription=sub,
        trigger_type=SourceType.INTERVAL,
        trigger_data=rfc3339(sub.next_run_at),
        key="unused",
        due_at=sub.next_run_at,
        hmac_key=hmac_key,
        now=timezone.now(),
    )
    body: dict[str, Any] = firing.request
    return body


def _without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("requestID", "signature")}


def test_the_stored_body_is_firing_news_with_its_own_request_id_and_signature(
    server: ExecutorServer, django_capture_on_commit_callbacks: Any
) -> None:
    automation = interval(server, 10)
    direct = automation.subscribe()
    module = automation.subscribe()
    validator_key()  # made by the first module subscription in real life
    prev_at = timezone.now() - timedelta(minutes=3)
    due = timezone.now().replace(microsecond=0) - timedelta(seconds=1)
    Subscription.objects.filter(pk=direct["id"]).update(
        next_run_at=due,
        execution_count=3,
        prev_execution_at=prev_at,
        prev_execution_id="earlier-id",
        token_inputs={"0x" + "12" * 20: "5"},
        metadata={"every": "2", "n": [1, {"x": None}], "é": "ü"},
        fee_token="0x" + "34" * 20,
    )
    Subscription.objects.filter(pk=module["id"]).update(
        next_run_at=due + timedelta(microseconds=1500), module_address="0x" + "ab" * 20
    )
    expected = {sid: _expected_body(sid, automation.hmac_key) for sid in (direct["id"], module["id"])}
    assert expected[module["id"]]["params"]["subscription"]["validatorAddress"] == validator_address()
    handed: list[tuple[list[str], str, Any]] = []
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert intervals_dispatch(deliver=lambda ids, token, eta: handed.append((ids, token, eta))) == 2
    [(ids, token, _)] = handed
    for firing in Firing.objects.select_related("subscription").all():
        sid = str(firing.subscription_id)
        body = firing.request
        assert json.dumps(_without_request_id(body), sort_keys=True, indent=1) == json.dumps(
            _without_request_id(expected[sid]), sort_keys=True, indent=1
        )
        assert body["requestID"] == firing.request_id
        assert body["signature"] == hmac_hex(automation.hmac_key, firing.request_id)
        assert re.fullmatch(r"[0-9a-f-]{36}-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", firing.request_id)
        assert firing.key == f"{sid}:interval:{rfc3339(firing.due_at)}"
        assert firing.trigger_type == SourceType.INTERVAL and firing.status == "pending" and firing.attempts == 0
        assert firing.next_attempt_at == max(firing.due_at, firing.created_at)
        assert str(firing.lease_token) == token and firing.lease_until and firing.lease_until > before
        assert re.fullmatch(r"[0-9a-f]{32}", firing.correlation_id)
        assert str(firing.pk) in ids
        sub = firing.subscription
        assert sub.prev_execution_id == firing.request_id and sub.prev_execution_at == firing.created_at
        assert sub.execution_count == body["context"]["executionCount"] + 1
        assert sub.next_run_at == next_due(firing.due_at, 10, firing.created_at)


def test_a_due_time_already_fired_is_not_fired_again_and_the_rest_of_the_batch_fires(
    server: ExecutorServer, django_capture_on_commit_callbacks: Any
) -> None:
    automation = interval(server)
    first, second = automation.subscribe(), automation.subscribe()
    due = timezone.now() - timedelta(seconds=1)
    Subscription.objects.update(next_run_at=due)
    intervals_dispatch(deliver=lambda ids, token, eta: None)
    fired = Firing.objects.get(subscription_id=first["id"])
    # Someone moves the first subscription's next_run_at back by hand: its due time has a firing.
    Subscription.objects.filter(pk=first["id"]).update(next_run_at=due)
    Subscription.objects.filter(pk=second["id"]).update(next_run_at=due + timedelta(seconds=30))
    before = Subscription.objects.get(pk=first["id"])
    handed: list[str] = []
    later = due + timedelta(seconds=31)
    with django_capture_on_commit_callbacks(execute=True):
        assert intervals_dispatch(deliver=lambda ids, token, eta: handed.extend(ids), now=later) == 1
    assert Firing.objects.filter(subscription_id=first["id"]).get() == fired  # one firing, the old one
    [new] = Firing.objects.filter(subscription_id=second["id"], due_at=due + timedelta(seconds=30))
    assert handed == [str(new.pk)]
    after = Subscription.objects.get(pk=first["id"])
    assert after.next_run_at == next_due(due, 30, later)  # moved on, its context untouched
    assert (after.execution_count, after.prev_execution_id) == (before.execution_count, before.prev_execution_id)


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_dies_before_commit_leaves_its_subscriptions_due(server: ExecutorServer) -> None:
    automation = interval(server)
    for _ in range(3):
        automation.subscribe()
    due = timezone.now() - timedelta(seconds=1)
    Subscription.objects.update(next_run_at=due)
    now = timezone.now()
    with pytest.raises(RuntimeError), transaction.atomic():  # the dispatcher dies after its writes
        fired = interval_batch_fire(
            now=now,
            horizon=now,
            limit=10,
            lease_token=uuid.uuid4(),
            lease_until=now + timedelta(minutes=1),
            next_due=next_due,
        )
        assert len(fired.ids) == 3
        raise RuntimeError("killed")
    assert not Firing.objects.exists()
    assert set(Subscription.objects.values_list("next_run_at", flat=True)) == {due}
    assert intervals_dispatch(deliver=lambda ids, token, eta: None) == 3


@pytest.mark.django_db(transaction=True)
def test_a_batch_outside_a_transaction_is_refused() -> None:
    now = timezone.now()
    with pytest.raises(RuntimeError, match=r"inside transaction\.atomic"):
        interval_batch_fire(
            now=now, horizon=now, limit=10, lease_token=uuid.uuid4(), lease_until=now, next_due=next_due
        )
