"""The admin's alert pages: channels are configured there (the secret generated, then read-only),
alerts and deliveries only read; a test notification goes out at once."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.test import Client

from orchestrator.operations.models import (
    Alert,
    AlertDelivery,
    AlertRule,
    ChannelKind,
    DeliveryEvent,
    NotificationChannel,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
CHANNELS = "/admin/operations/notificationchannel/"


@pytest.fixture
def browser() -> Client:
    client = Client()
    client.force_login(UserFactory.create(superuser=True, username="operator", password="x"))
    return client


def test_a_webhook_channel_is_added_with_a_generated_secret_shown_read_only(browser: Client) -> None:
    form = {"name": "pager", "kind": "webhook", "url": "https://hooks.example.test/a", "enabled": "on"}
    response = browser.post(f"{CHANNELS}add/", {**form, "rules": [AlertRule.DEAD_LETTER, AlertRule.RPC_DOWN]})
    assert response.status_code == 302, response.content.decode()[:2000]
    channel = NotificationChannel.objects.get()
    assert channel.rules == ["dead_letter", "rpc_down"] and channel.secret.startswith("whsec_")

    page = browser.get(f"{CHANNELS}{channel.pk}/change/").content.decode()
    assert channel.secret in page and 'name="secret"' not in page
    browser.post(f"{CHANNELS}{channel.pk}/change/", {**form, "rules": []})
    channel.refresh_from_db()
    assert channel.rules == [] and channel.wants(AlertRule.TRIGGER_LATE)


def test_a_channel_without_its_target_is_refused(browser: Client) -> None:
    response = browser.post(f"{CHANNELS}add/", {"name": "mail", "kind": "email", "emails": "", "enabled": "on"})
    assert response.status_code == 200 and "An e-mail channel needs at least one address." in response.content.decode()
    assert not NotificationChannel.objects.exists()


def test_alerts_are_listed_with_their_state_link_and_deliveries(browser: Client) -> None:
    channel = NotificationChannel.objects.create(name="ops mail", kind=ChannelKind.EMAIL, emails="ops@example.test")
    alert = Alert.objects.create(
        rule=AlertRule.RPC_DOWN, key="999", summary="chain 999 is down", link="https://x.test/c"
    )
    AlertDelivery.objects.create(alert=alert, channel=channel, event=DeliveryEvent.FIRING, last_error="SMTP down")

    listing = browser.get("/admin/operations/alert/").content.decode()
    assert "FIRING" in listing and "chain 999 is down" in listing and 'href="https://x.test/c"' in listing
    page = browser.get(f"/admin/operations/alert/{alert.pk}/change/").content.decode()
    assert "ops mail" in page and "SMTP down" in page and 'name="summary"' not in page
    assert browser.get("/admin/operations/alert/add/").status_code == 403


def test_a_test_notification_is_sent_at_once(browser: Client, settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    channel = NotificationChannel.objects.create(name="ops mail", kind=ChannelKind.EMAIL, emails="a@x.test, b@x.test")
    response = browser.post(CHANNELS, {"action": "send_test", "_selected_action": [channel.pk]}, follow=True)
    assert [str(m) for m in response.context["messages"]] == ["ops mail: test notification sent."]
    (sent,) = mail.outbox
    assert sent.to == ["a@x.test", "b@x.test"] and sent.subject.startswith("[TEST] test: A test notification")
