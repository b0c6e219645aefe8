"""The alert rules: each looks at the system now and says which of its conditions hold.

A condition's key names its subject within the rule, and is what makes an alert the same alert
from one evaluation to the next. One alert per subject where each subject needs its own action
(a dead-lettered run to replay or discard, a chain's RPC, a signer to fund, a proposal to
decide); one aggregate alert where the cause is usually one thing seen many times (stalled runs
mean the workers or beat are down; late triggers mean the dispatcher or the executors are
behind), so an outage pages once, not once per run or firing.

A rule that cannot tell whether a subject's condition holds (its chain did not answer) names the
subject in `undecided`: its alert stays as it is, neither fired nor resolved."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q
from django.urls import reverse

from approvals.models import Decision, ProposalStatus, RebalanceProposal
from orchestrator.automations.models import Firing, FiringStatus
from orchestrator.engine.selectors import runs_dead_lettered, runs_stalled
from orchestrator.operations.alert_metrics import ChainReading, chains_read
from orchestrator.operations.models import AlertRule
from relayer.models import KeyPurpose, SigningKey

logger = logging.getLogger("orchestrator.operations.alerts")
T = TypeVar("T")


@dataclass(frozen=True)
class Condition:
    rule: str
    key: str
    summary: str
    link: str


@dataclass
class RuleResult:
    conditions: list[Condition] = field(default_factory=list)
    undecided: set[str] = field(default_factory=set)


def absolute(path: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}{path}"


def dead_letters(now: datetime) -> RuleResult:
    result = RuleResult()
    for run in runs_dead_lettered().only("id", "kind", "step_name", "updated_at"):
        result.conditions.append(
            Condition(
                AlertRule.DEAD_LETTER,
                str(run.id),
                f"{run.kind} run {run.id} is dead-lettered at step {run.step_name or '?'}: replay or discard it",
                absolute(reverse("admin:orchestrator_workflowrun_change", args=[run.id])),
            )
        )
    return result


def stalled_runs(now: datetime) -> RuleResult:
    stalled = runs_stalled(now=now)
    count = stalled.count()
    if not count:
        return RuleResult()
    oldest = stalled.only("id", "kind", "due_at").first()
    detail = ""
    if oldest is not None:
        detail = f"; the oldest, {oldest.kind} {oldest.id}, was due at {oldest.due_at:%Y-%m-%d %H:%M:%S} UTC"
    summary = f"{count} workflow run(s) stalled: due and no worker on them{detail}"
    return RuleResult([Condition(AlertRule.STALLED_RUNS, "runs", summary, absolute(reverse("ops-dashboard")))])


def trigger_late(now: datetime) -> RuleResult:
    """Firings whose hook went out more than ALERTS_TRIGGER_LATE_SECONDS after they were due
    (those sent within the window), and firings due that long ago and not sent yet."""
    threshold = timedelta(seconds=settings.ALERTS_TRIGGER_LATE_SECONDS)
    window = now - timedelta(seconds=settings.ALERTS_TRIGGER_LATE_WINDOW_SECONDS)
    lateness = ExpressionWrapper(F("sent_at") - F("due_at"), output_field=DurationField())
    sent = (
        Firing.objects.filter(sent_at__gte=window)
        .annotate(late=lateness)
        .filter(late__gt=threshold)
        .aggregate(n=Count("id"), worst=Max("late"))
    )
    unsent = Firing.objects.filter(
        status=FiringStatus.PENDING, sent_at__isnull=True, due_at__lt=now - threshold
    ).count()
    if not sent["n"] and not unsent:
        return RuleResult()
    parts = []
    if sent["n"]:
        parts.append(
            f"{sent['n']} firing(s) sent more than {threshold.total_seconds():g} s after due in the last "
            f"{settings.ALERTS_TRIGGER_LATE_WINDOW_SECONDS:g} s (worst {sent['worst'].total_seconds():.1f} s)"
        )
    if unsent:
        parts.append(f"{unsent} firing(s) due more than {threshold.total_seconds():g} s ago and not sent")
    link = absolute(reverse("admin:automations_firing_changelist"))
    return RuleResult([Condition(AlertRule.TRIGGER_LATE, "firings", "; ".join(parts), link)])


def proposals_expiring(now: datetime) -> RuleResult:
    """Pending proposals that expire within ALERTS_PROPOSAL_EXPIRY_SECONDS. Pending means quorum
    is not reached: the decision that reaches it closes the proposal in the same transaction."""
    horizon = now + timedelta(seconds=settings.ALERTS_PROPOSAL_EXPIRY_SECONDS)
    result = RuleResult()
    proposals = (
        RebalanceProposal.objects.filter(status=ProposalStatus.PENDING, expires_at__gt=now, expires_at__lte=horizon)
        .annotate(approved=Count("approvals", filter=Q(approvals__decision=Decision.APPROVE)))
        .select_related("vault")
        .order_by("expires_at")
    )
    for p in proposals:
        minutes = (p.expires_at - now).total_seconds() / 60
        result.conditions.append(
            Condition(
                AlertRule.PROPOSAL_EXPIRING,
                p.proposal_id,
                f"{p.proposal_id} ({p.vault.vault_id}) expires in {minutes:.0f} min with "
                f"{p.approved} of {p.quorum_required} approvals",
                absolute(reverse("admin:approvals_rebalanceproposal_change", args=[p.pk])),
            )
        )
    return result


def chains_probe() -> list[ChainReading]:
    """Every enabled chain's head and relayer balances, one JSON-RPC batch per chain, in parallel
    (the same read as the scrape's gauges), bounded by ALERTS_RPC_TIMEOUT_SECONDS."""
    return chains_read(timeout=settings.ALERTS_RPC_TIMEOUT_SECONDS)


def rpc_down(readings: list[ChainReading]) -> RuleResult:
    result = RuleResult()
    for chain in readings:
        if chain.head is None:
            result.conditions.append(
                Condition(
                    AlertRule.RPC_DOWN,
                    str(chain.chain_id),
                    f"{chain.name} ({chain.chain_id}): RPC did not answer eth_blockNumber: {chain.error}",
                    absolute(reverse("admin:relayer_chain_change", args=[chain.chain_id])),
                )
            )
    return result


def signers_low(readings: list[ChainReading]) -> RuleResult:
    """Relayer keys under RELAYER_LOW_BALANCE_WEI on the chains that answered. On a chain that
    did not, or a balance that could not be read, the signer's alert stays as it was: an
    unreachable chain is rpc_down's alert, not this one's."""
    result = RuleResult()
    keys = list(SigningKey.objects.filter(purpose=KeyPurpose.RELAYER))
    threshold = settings.RELAYER_LOW_BALANCE_WEI
    for chain in readings:
        if chain.head is None:
            result.undecided.add(f"{chain.chain_id}:")
            continue
        for key in keys:
            subject = f"{chain.chain_id}:{key.address.lower()}"
            balance = chain.balances.get(key.address)
            if balance is None:  # unread (the key came after the read, or its answer was an error)
                result.undecided.add(subject)
                continue
            if balance < threshold:
                result.conditions.append(
                    Condition(
                        AlertRule.SIGNER_LOW_BALANCE,
                        subject,
                        f"relayer signer {key.address} on {chain.name} ({chain.chain_id}) holds "
                        f"{Decimal(balance) / 10**18:.6f} ETH, under {Decimal(threshold) / 10**18:f} ETH",
                        absolute(reverse("admin:relayer_signingkey_change", args=[key.pk])),
                    )
                )
    return result


def rules_evaluate(now: datetime) -> dict[str, RuleResult | None]:
    """Every rule's result; None for a rule that failed (its alerts stay as they are)."""
    results: dict[str, RuleResult | None] = {}
    simple: dict[str, Callable[[datetime], RuleResult]] = {
        AlertRule.DEAD_LETTER: dead_letters,
        AlertRule.STALLED_RUNS: stalled_runs,
        AlertRule.TRIGGER_LATE: trigger_late,
        AlertRule.PROPOSAL_EXPIRING: proposals_expiring,
    }
    for rule, evaluate in simple.items():
        results[rule] = _guarded(rule, evaluate, now)
    probes = _guarded(AlertRule.RPC_DOWN, lambda _now: chains_probe(), now)
    if probes is None:
        results[AlertRule.RPC_DOWN] = results[AlertRule.SIGNER_LOW_BALANCE] = None
    else:
        results[AlertRule.RPC_DOWN] = rpc_down(probes)
        results[AlertRule.SIGNER_LOW_BALANCE] = _guarded(
            AlertRule.SIGNER_LOW_BALANCE, lambda _now: signers_low(probes), now
        )
    return results


def _guarded(rule: str, evaluate: Callable[[datetime], T], now: datetime) -> T | None:
    try:
        return evaluate(now)
    except Exception:
        logger.exception("alerts: rule %s could not be evaluated; its alerts stay as they are", rule)
        return None
