"""Sending one alert delivery: an e-mail, or a JSON POST signed with Standard Webhooks headers.

Exactly once under normal operation: a worker takes the delivery with a conditional UPDATE
(pending, and no live lease), sends, then records `sent`. A second task for the same delivery
(the evaluator's re-enqueue, a redelivered message) finds it held or sent and does nothing. A
worker killed after the receiver got the call and before `sent` was recorded leaves the lease to
run out and the delivery is sent again: at least once then, with the same webhook-id.

    webhook-id         the delivery's id (the same on every attempt)
    webhook-timestamp  Unix seconds of this attempt
    webhook-signature  v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>" keyed with the
                       base64-decoded part of the channel's "whsec_" secret>
"""

from __future__ import annotations

import json
import logging
import smtplib
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from orchestrator.automations.typed_data import webhook_signature
from orchestrator.engine.errors import RetryableError
from orchestrator.operations.models import (
    Alert,
    AlertDelivery,
    ChannelKind,
    DeliveryStatus,
    NotificationChannel,
    webhook_secret_key,
)

logger = logging.getLogger("orchestrator.operations.alerts")


class WebhookRefused(Exception):
    """The receiver answered with a status other than 2xx."""


# What one attempt may fail with: the network, the mail server, the receiver's answer.
SEND_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, smtplib.SMTPException, OSError, WebhookRefused)


class DeliveryFailed(RetryableError):
    """This attempt failed and attempts remain: the task tries again after its backoff."""


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at is not None else None


def alert_payload(alert: Alert, event: str) -> dict[str, Any]:
    return {
        "type": f"alert.{event}",
        "alert": {
            "rule": alert.rule,
            "key": alert.key,
            "summary": alert.summary,
            "link": alert.link,
            "startedAt": _iso(alert.started_at),
            "resolvedAt": _iso(alert.resolved_at),
        },
    }


def webhook_headers(*, secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "User-Agent": "vault-orchestrator",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": webhook_signature(webhook_secret_key(secret), msg_id=msg_id, timestamp=stamp, body=body),
    }


def webhook_post(*, channel: NotificationChannel, msg_id: str, payload: dict[str, Any]) -> None:
    """POSTs the payload to the channel's URL. Raises httpx.HTTPError or WebhookRefused."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = webhook_headers(secret=channel.secret, msg_id=msg_id, body=body)
    answer = httpx.post(channel.url, content=body, headers=headers, timeout=settings.ALERTS_WEBHOOK_TIMEOUT_SECONDS)
    if not 200 <= answer.status_code < 300:
        raise WebhookRefused(f"HTTP {answer.status_code}: {answer.text[:200]}")


def email_send(*, channel: NotificationChannel, payload: dict[str, Any]) -> None:
    alert = payload["alert"]
    state = payload["type"].removeprefix("alert.").upper()
    subject = f"[{state}] {alert['rule']}: {alert['summary']}"[:200].replace("\n", " ")
    lines = [alert["summary"], "", f"Look: {alert['link']}", f"Started: {alert['startedAt']}"]
    if alert["resolvedAt"]:
        lines.append(f"Resolved: {alert['resolvedAt']}")
    lines += ["", f"Rule {alert['rule']}, subject {alert['key']}."]
    send_mail(subject, "\n".join(lines), settings.DEFAULT_FROM_EMAIL, channel.addresses, fail_silently=False)


def channel_send(*, channel: NotificationChannel, msg_id: str, payload: dict[str, Any]) -> None:
    if channel.kind == ChannelKind.EMAIL:
        email_send(channel=channel, payload=payload)
    else:
        webhook_post(channel=channel, msg_id=msg_id, payload=payload)


def alert_delivery_send(*, delivery_id: uuid.UUID) -> str:
    """Sends the delivery unless it is already sent, failed, or held by another worker. Returns
    what happened: sent, skipped, failed (attempts used up). Raises DeliveryFailed when this
    attempt failed and attempts remain."""
    now = timezone.now()
    taken = (
        AlertDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(
            lease_until=now + timedelta(seconds=settings.ALERTS_DELIVERY_LEASE_SECONDS),
            attempts=F("attempts") + 1,
            last_attempt_at=now,
        )
    )
    if not taken:
        return "skipped"
    delivery = AlertDelivery.objects.select_related("alert", "channel").get(pk=delivery_id)
    if not delivery.channel.enabled:
        _record(delivery, DeliveryStatus.FAILED, "the channel was disabled before this was sent")
        return "failed"
    try:
        channel_send(
            channel=delivery.channel, msg_id=str(delivery.id), payload=alert_payload(delivery.alert, delivery.event)
        )
    except SEND_ERRORS as exc:
        error = f"{exc.__class__.__name__}: {exc}"[:500]
        if delivery.attempts >= settings.ALERTS_DELIVERY_MAX_ATTEMPTS:
            _record(delivery, DeliveryStatus.FAILED, error)
            logger.error("alert delivery %s to %s failed for good: %s", delivery.id, delivery.channel.name, error)
            return "failed"
        _record(delivery, DeliveryStatus.PENDING, error)
        raise DeliveryFailed(f"delivery {delivery.id} to {delivery.channel.name}: {error}") from exc
    _record(delivery, DeliveryStatus.SENT, "")
    logger.info("alert %s %s sent to %s", delivery.alert, delivery.event, delivery.channel.name)
    return "sent"


def _record(delivery: AlertDelivery, status: str, error: str) -> None:
    AlertDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING).update(
        status=status,
        last_error=error,
        lease_until=None,
        sent_at=timezone.now() if status == DeliveryStatus.SENT else None,
    )


def channel_test_send(*, channel: NotificationChannel) -> None:
    """Sends a test notification to the channel now (the admin's action). Raises what sending raises."""
    now = timezone.now()
    payload = {
        "type": "alert.test",
        "alert": {
            "rule": "test",
            "key": channel.name,
            "summary": f"A test notification to {channel.name}",
            "link": settings.PUBLIC_BASE_URL + reverse("admin:operations_notificationchannel_changelist"),
            "startedAt": _iso(now),
            "resolvedAt": None,
        },
    }
    channel_send(channel=channel, msg_id=f"test-{uuid.uuid4()}", payload=payload)
