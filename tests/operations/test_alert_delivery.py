"""Alert deliveries on the real stack: beat evaluates, a worker sends; a webhook receiver here
checks the Standard Webhooks signature itself (not with our code), e-mail lands in files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from orchestrator.engine.services import workflow_discard
from orchestrator.operations.alerting.evaluation import alerts_apply, deliveries_requeue_stale
from orchestrator.operations.alerting.rules import dead_letters
from orchestrator.operations.models import (
    Alert,
    AlertDelivery,
    AlertRule,
    AlertState,
    ChannelKind,
    DeliveryEvent,
    DeliveryStatus,
    NotificationChannel,
)
from tests.conftest import Workers, wait_until
from tests.support.automations import beat_start
from tests.support.mail import mails, worker_mail_env
from tests.support.runs import dead_lettered_run, make_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]


class Receiver:
    """An HTTP server that records every POST and whether its signature verifies with `secret`.
    `statuses` are answered in turn, then 200."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.secret = ""
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append(
                    {"headers": dict(self.headers), "body": json.loads(body), "valid": receiver.verify(self, body)}
                )
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verify(self, request: BaseHTTPRequestHandler, body: bytes) -> bool:
        """Standard Webhooks, as a receiver implements it from the spec."""
        msg_id, stamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
        if abs(time.time() - int(stamp)) > 300:
            return False
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        return any(hmac.compare_digest(expected, s) for s in request.headers["webhook-signature"].split())

    def events(self) -> list[str]:
        return [c["body"]["type"] for c in self.calls]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


def channels(receiver: Receiver) -> None:
    # Only dead letters: beat's other rules (a chain row nobody serves, say) must not add calls.
    hook = NotificationChannel.objects.create(
        name="on-call hook", kind=ChannelKind.WEBHOOK, url=receiver.url, rules=[AlertRule.DEAD_LETTER]
    )
    receiver.secret = hook.secret
    NotificationChannel.objects.create(
        name="on-call mail", kind=ChannelKind.EMAIL, emails="oncall@example.test", rules=[AlertRule.DEAD_LETTER]
    )


def test_a_dead_letter_is_told_once_when_it_fires_and_once_when_it_clears(
    workers: Workers, settings: Any, tmp_path: Path, receiver: Receiver
) -> None:
    settings.ALERTS_EVALUATE_SECONDS = 1  # the schedule row beat reads is written from here
    env = {**workers.env, **worker_mail_env(tmp_path), "ALERTS_EVALUATE_SECONDS": "1"}
    workers.start(extra_env=env)
    channels(receiver)
    run = dead_lettered_run()
    beat = beat_start(env)
    try:
        wait_until(lambda: receiver.calls, timeout=30, message="the firing webhook")
        time.sleep(4)  # four more evaluations: nothing new to tell
        assert receiver.events() == ["alert.firing"]
        workflow_discard(run_id=run.id, actor="test", reason="settled by hand")
        wait_until(lambda: len(receiver.calls) >= 2, timeout=30, message="the resolved webhook")
        time.sleep(4)
    finally:
        beat.stop()

    assert receiver.events() == ["alert.firing", "alert.resolved"]
    assert all(c["valid"] for c in receiver.calls)
    (alert,) = Alert.objects.filter(rule=AlertRule.DEAD_LETTER)
    assert alert.state == AlertState.RESOLVED
    firing, resolved = (c["body"]["alert"] for c in receiver.calls)
    assert firing["rule"] == "dead_letter" and firing["key"] == str(run.id) and firing["resolvedAt"] is None
    assert firing["link"].endswith(f"/admin/orchestrator/workflowrun/{run.id}/change/")
    assert resolved["resolvedAt"] and resolved["startedAt"] == firing["startedAt"]
    hook_deliveries = AlertDelivery.objects.filter(channel__kind=ChannelKind.WEBHOOK).order_by("created_at")
    assert [c["headers"]["webhook-id"] for c in receiver.calls] == [str(d.id) for d in hook_deliveries]
    assert set(AlertDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    wait_until(lambda: len(mails(tmp_path)) >= 2, timeout=10, message="both e-mails")
    subjects = [m["Subject"] for m in mails(tmp_path)]
    assert [s.split()[0] for s in subjects] == ["[FIRING]", "[RESOLVED]"]
    assert all(m["To"] == "oncall@example.test" for m in mails(tmp_path))


def test_a_refused_webhook_is_retried_with_the_same_id(workers: Workers, receiver: Receiver) -> None:
    workers.start()
    channels(receiver)
    NotificationChannel.objects.filter(kind=ChannelKind.EMAIL).delete()
    receiver.statuses = [503]
    make_run("dead-letter")
    alerts_apply(rule=AlertRule.DEAD_LETTER, result=dead_letters(timezone.now()), now=timezone.now())

    delivery = wait_until(
        lambda: AlertDelivery.objects.filter(status=DeliveryStatus.SENT).first(), timeout=30, message="the retry"
    )
    assert delivery.attempts == 2 and delivery.last_error == ""
    assert [c["headers"]["webhook-id"] for c in receiver.calls] == [str(delivery.id)] * 2
    assert all(c["valid"] for c in receiver.calls)


def test_a_delivery_a_dead_worker_left_pending_is_sent_once_by_the_next_evaluation(
    workers: Workers, receiver: Receiver
) -> None:
    workers.start()
    channels(receiver)
    hook = NotificationChannel.objects.get(kind=ChannelKind.WEBHOOK)
    alert = Alert.objects.create(rule=AlertRule.DEAD_LETTER, key="run-x", summary="dead", link="http://x/")
    long_ago = timezone.now() - timedelta(hours=1)
    # Taken by a worker an hour ago (its lease long over) that died before recording anything.
    stuck = AlertDelivery.objects.create(
        alert=alert,
        channel=hook,
        event=DeliveryEvent.FIRING,
        attempts=1,
        created_at=long_ago,
        last_attempt_at=long_ago,
        lease_until=long_ago + timedelta(minutes=1),
    )

    assert deliveries_requeue_stale() == 1
    wait_until(lambda: AlertDelivery.objects.get(pk=stuck.pk).status == DeliveryStatus.SENT, message="the resend")
    assert deliveries_requeue_stale() == 0
    time.sleep(1)
    assert [c["headers"]["webhook-id"] for c in receiver.calls] == [str(stuck.id)]
