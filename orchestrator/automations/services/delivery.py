"""Delivering firings to /kernel/trigger and recording what the executor answered.

Write state first, then call, then record with a conditional update: a delivery takes its
firings by setting a fresh lease token, and records an outcome only while the token is still
its own. A worker killed mid-call leaves the lease to run out; the sweep hands the firing to
another delivery, which sends the same body (same requestID) again. So a hook may arrive twice
(executors dedupe on requestID, as with any webhook), but a firing is never lost, never
recorded twice, and its task is relayed at most once (the relay's key is the firing)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from orchestrator.automations.models import AutomationConfig, ConfigStatus, Firing, FiringStatus, SubscriptionStatus
from orchestrator.automations.services.answers import Verdict, answer_review
from orchestrator.automations.services.destinations import Destination, DestinationRefused, destination_pin
from orchestrator.automations.services.firings import HmacKeys
from orchestrator.automations.services.hooks import HookCall, HookResult, hook_url, hooks_post
from orchestrator.engine import RetryPolicy
from orchestrator.engine.services import workflow_start
from orchestrator.infra.bulk import rows_update
from orchestrator.infra.failpoints import failpoint
from orchestrator.infra.observability import correlation
from relayer.keys import key_manager

logger = logging.getLogger("orchestrator.automations")

EXECUTION_WORKFLOW = "automation.execution"


def hook_retry() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.AUTOMATION_HOOK_MAX_ATTEMPTS,
        base_delay=settings.AUTOMATION_HOOK_RETRY_BASE_SECONDS,
        max_delay=settings.AUTOMATION_HOOK_RETRY_MAX_SECONDS,
    )


@dataclass
class DeliveryResult:
    taken: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def firings_deliver(*, firing_ids: list[str], token: str) -> DeliveryResult:
    """Sends the hooks of the firings handed over with `token`, concurrently, and records each
    answer. Firings another delivery holds are left alone."""
    result = DeliveryResult()
    lease = uuid.uuid4()
    firings = _take(firing_ids, token, lease)
    result.taken = len(firings)
    if not firings:
        return result
    # The task was scheduled for when they are due; a worker whose clock runs ahead waits here.
    early = (max(f.due_at for f in firings) - timezone.now()).total_seconds()
    if early > 0:
        time.sleep(min(early, settings.AUTOMATION_LOOKAHEAD_SECONDS + 1))
    keys, calls = HmacKeys(), []
    pinned, refused = _destinations({f.subscription.config.base_url for f in firings})
    for firing in firings:
        config = firing.subscription.config
        if config.base_url in refused:
            continue
        calls.append(
            HookCall(
                url=hook_url(config.base_url, "trigger"),
                destination=pinned[config.base_url],
                body=firing.request,
                request_id=firing.request_id,
                hmac_key=keys(config),
                verifying_signature=key_manager().sign_message(key=config.verifying_key, text=firing.request_id),
                correlation_id=firing.correlation_id,
            )
        )
    sendable = [i for i, f in enumerate(firings) if f.subscription.config.base_url not in refused]
    answers = dict(zip(sendable, hooks_post(calls), strict=True))
    failpoint("automations.after_hook")  # tests: a worker killed between the call and its record
    # One transaction for the batch's records: one commit instead of one per firing. Each
    # record is still conditional on the lease, so a firing taken over meanwhile is left alone.
    records = _Records(lease)
    with transaction.atomic():
        for i, firing in enumerate(firings):
            url = firing.subscription.config.base_url
            hook = answers.get(i) or HookResult(None, error=f"destination refused: {refused.get(url, '')}")
            with correlation(firing.correlation_id):
                result.count(_record(firing, records, hook, keys(firing.subscription.config)))
        records.write()
    return result


# What a delivery reads of a firing and its subscription: the hook's body and the record's
# inputs, not the whole rows (every timestamptz column costs a Python loader call, every jsonb a
# parse). The configs are read once per batch, not once per firing.
TAKEN = (
    "id",
    "request_id",
    "request",
    "due_at",
    "attempts",
    "sent_at",
    "correlation_id",
    "lease_token",
    "subscription__status",
    "subscription__config",
    "subscription__chain_id",
    "subscription__sub_account_address",
)


def _take(firing_ids: list[str], token: str, lease: uuid.UUID) -> list[Firing]:
    """Takes the handed-over firings (or ones whose lease ran out) under a new lease. Firings of
    a subscription cancelled meanwhile are closed instead: cancel stops triggers at once."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            Firing.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("subscription")
            .only(*TAKEN)
            .filter(pk__in=firing_ids, next_attempt_at__isnull=False)
            .filter(Q(lease_token=token) | Q(lease_until__lt=now))
        )
        configs = AutomationConfig.objects.select_related("executor", "executor_key", "verifying_key").in_bulk(
            {f.subscription.config_id for f in rows}
        )
        for firing in rows:
            firing.subscription.config = configs[firing.subscription.config_id]
        stopped = {
            f.pk
            for f in rows
            if f.subscription.status != SubscriptionStatus.ACTIVE or f.subscription.config.status != ConfigStatus.ACTIVE
        }
        live = [f for f in rows if f.pk not in stopped]
        Firing.objects.filter(pk__in=stopped).update(
            status=FiringStatus.SKIPPED,
            reason="subscription cancelled before the hook was sent",
            next_attempt_at=None,
            lease_token=None,
            lease_until=None,
        )
        lease_until = now + timedelta(
            seconds=max(settings.AUTOMATION_DELIVERY_LEASE_SECONDS, settings.AUTOMATION_HOOK_TIMEOUT_SECONDS + 1)
        )
        Firing.objects.filter(pk__in=[f.pk for f in live]).update(
            lease_token=lease, lease_until=lease_until, attempts=F("attempts") + 1, sent_at=Coalesce("sent_at", now)
        )
    for firing in live:
        firing.attempts += 1
        firing.sent_at = firing.sent_at or now
    return live


def _destinations(urls: set[str]) -> tuple[dict[str, Destination], dict[str, str]]:
    """Checked again at every call: a name may resolve elsewhere now than at config time. The
    calls connect to the addresses checked here (the pins), not to a later resolution."""
    pinned, refused = {}, {}
    for url in urls:
        try:
            pinned[url] = destination_pin(url)
        except (DestinationRefused, ValueError) as exc:
            refused[url] = str(exc)
    return pinned, refused


CLOSED = ["status", "reason", "response", "answered_at", "hook_ms", "next_attempt_at", "lease_token", "lease_until"]
RETRIED = ["next_attempt_at", "lease_until", "lease_token", "reason"]


def _closed(firing: Firing, *, status: str, reason: str, hook: HookResult) -> None:
    """Sets the CLOSED fields of a firing whose hook call had this final outcome."""
    answered = hook.status is not None
    firing.status, firing.reason = status, reason
    firing.response = hook.answer if answered and 200 <= (hook.status or 0) < 300 else None
    firing.answered_at = timezone.now() if answered else None
    firing.hook_ms = hook.elapsed_ms if answered else None
    firing.next_attempt_at = firing.lease_token = firing.lease_until = None


class _Records:
    """A batch's plain outcomes (skipped, failed, retrying), written in one statement per kind,
    each conditional on the batch's lease. Answers that lead to a workflow are written one by
    one (`_execute`)."""

    def __init__(self, lease: uuid.UUID) -> None:
        self.lease = lease
        self.closed: list[Firing] = []
        self.retried: list[Firing] = []

    def close(self, firing: Firing, *, status: str, reason: str, hook: HookResult) -> None:
        _closed(firing, status=status, reason=reason, hook=hook)
        self.closed.append(firing)

    def retry(self, firing: Firing, *, at: datetime, reason: str) -> None:
        # The sweep hands it to a delivery again once `at` has passed.
        firing.next_attempt_at = firing.lease_until = at
        firing.lease_token, firing.reason = None, reason
        self.retried.append(firing)

    def write(self) -> None:
        rows_update(Firing, self.closed, CLOSED, only_if={"lease_token": self.lease})
        rows_update(Firing, self.retried, RETRIED, only_if={"lease_token": self.lease})


def _record(firing: Firing, records: _Records, hook: HookResult, hmac_key: str) -> str:
    """Decides one call's outcome and records it; returns it (for the task's summary)."""
    if hook.retryable:
        return _retry_or_fail(firing, records, hook)
    if not 200 <= (hook.status or 0) < 300:
        detail = f"the executor answered HTTP {hook.status}"
        records.close(firing, status=FiringStatus.FAILED, reason=f"{detail}; not retried", hook=hook)
        logger.warning("firing %s: %s", firing.request_id, detail)
        return FiringStatus.FAILED
    if hook.error:  # too large, or not JSON
        verdict = Verdict("refused", code="malformed_answer", reason=hook.error)
    else:
        verdict = answer_review(
            answer=hook.answer, request_id=firing.request_id, subscription=firing.subscription, hmac_key=hmac_key
        )
    if verdict.outcome == "skip":
        records.close(firing, status=FiringStatus.SKIPPED, reason="the executor skipped", hook=hook)
        return FiringStatus.SKIPPED
    return _execute(firing, records.lease, hook, verdict)


def _retry_or_fail(firing: Firing, records: _Records, hook: HookResult) -> str:
    detail = hook.error or f"the executor answered HTTP {hook.status}"
    if firing.attempts >= settings.AUTOMATION_HOOK_MAX_ATTEMPTS:
        reason = f"no answer after {firing.attempts} attempts: {detail}"
        records.close(firing, status=FiringStatus.FAILED, reason=reason, hook=hook)
        logger.warning("firing %s failed: %s", firing.request_id, reason)
        return FiringStatus.FAILED
    retry_at = timezone.now() + timedelta(seconds=hook_retry().delay(firing.attempts))
    records.retry(firing, at=retry_at, reason=f"attempt {firing.attempts}: {detail}; retrying")
    logger.info("firing %s attempt %d: %s; retrying", firing.request_id, firing.attempts, detail)
    return "retrying"


def _execute(firing: Firing, lease: uuid.UUID, hook: HookResult, verdict: Verdict) -> str:
    """A task to relay, or a refused answer to report: both go on as an execution workflow."""
    status = FiringStatus.PENDING if verdict.outcome == "task" else FiringStatus.REFUSED
    reason = "" if verdict.outcome == "task" else f"{verdict.code}: {verdict.reason}"
    with transaction.atomic():
        _closed(firing, status=status, reason=reason, hook=hook)
        if not rows_update(Firing, [firing], CLOSED, only_if={"lease_token": lease}):
            return "lost lease"
        run, _ = workflow_start(
            kind=EXECUTION_WORKFLOW,
            input={"firing": str(firing.pk), "verdict": asdict(verdict)},
            idempotency_key=f"firing:{firing.pk}",
            correlation_id=firing.correlation_id,
        )
        Firing.objects.filter(pk=firing.pk).update(workflow_run=run)
    if verdict.outcome == "refused":
        logger.warning("firing %s refused: %s", firing.request_id, reason)
    return status
