"""The compliance check: every rule a rebalance breaks, not just the first.

Flow A runs it before emitting an intent, Flow B again when a proposal executes (against the
policy active then), and the automation hook for its own transactions.

A timing violation (the minimum interval, the UTC window) only says "not yet": it carries
`not_before`, the moment it clears, so Flow B can wait for it instead of giving up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from vaults.models import POLICY_RULES
from vaults.services.strategy import HUNDRED

TIMING = "timing"


@dataclass(frozen=True)
class Violation:
    """A rule broken. `not_before` (UTC) is set when the rule clears by itself at that time:
    the timing rules. It is not part of `as_dict` nor of the journal (ComplianceRecord)."""

    rule: str
    message: str
    not_before: datetime | None = None

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class RecordedViolation:
    """A violation as a workflow step journals it: {"rule", "message"}, the format runs
    journaled before `not_before` existed have too."""

    rule: str
    message: str


@dataclass(frozen=True)
class ComplianceResult:
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": [v.as_dict() for v in self.violations]}

    def summary(self) -> str:
        return "; ".join(f"{v.rule}: {v.message}" for v in self.violations) or "compliant"

    def clears_at(self) -> datetime | None:
        """When every violation has cleared by itself, if every one is a timing rule that says
        when (the latest of their `not_before`); None if any needs more than time."""
        times = [v.not_before for v in self.violations if v.rule == TIMING]
        if not self.violations or len(times) != len(self.violations) or None in times:
            return None
        return max(t for t in times if t is not None)


@dataclass(frozen=True)
class ComplianceRecord:
    """A check's result as a workflow step journals it: {"ok", "violations": [{"rule", "message"}]}."""

    ok: bool
    violations: list[RecordedViolation]

    @classmethod
    def of(cls, result: ComplianceResult) -> ComplianceRecord:
        return cls(ok=result.ok, violations=[RecordedViolation(v.rule, v.message) for v in result.violations])


@dataclass(frozen=True)
class PolicyRules:
    """The numbers of a VaultPolicy that the check needs (a plain value, easy to test)."""

    max_exposure_pct: Decimal
    whitelist: frozenset[str]
    max_risk: int
    min_interval: timedelta
    window_start_hour: int
    window_end_hour: int
    max_feed_age: timedelta
    max_turnover_pct: Decimal

    def as_json(self) -> dict[str, Any]:
        return {
            "maxExposurePct": str(self.max_exposure_pct),
            "whitelist": sorted(self.whitelist),
            "maxRisk": self.max_risk,
            "minIntervalSeconds": int(self.min_interval.total_seconds()),
            "windowStartHour": self.window_start_hour,
            "windowEndHour": self.window_end_hour,
            "maxFeedAgeSeconds": int(self.max_feed_age.total_seconds()),
            "maxTurnoverPct": str(self.max_turnover_pct),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicyRules:
        return cls(
            max_exposure_pct=Decimal(data["maxExposurePct"]),
            whitelist=frozenset(data["whitelist"]),
            max_risk=data["maxRisk"],
            min_interval=timedelta(seconds=data["minIntervalSeconds"]),
            window_start_hour=data["windowStartHour"],
            window_end_hour=data["windowEndHour"],
            max_feed_age=timedelta(seconds=data["maxFeedAgeSeconds"]),
            max_turnover_pct=Decimal(data["maxTurnoverPct"]),
        )

    @classmethod
    def of(cls, policy: Any, *, whitelist: Iterable[str] | None = None) -> PolicyRules:
        """The policy's rules; `whitelist` (its protocols' names) when the caller has read it
        already, else it is queried here."""
        names = policy.whitelist.values_list("name", flat=True) if whitelist is None else whitelist
        return cls.of_fields({name: getattr(policy, name) for name in POLICY_RULES}, whitelist=names)

    @classmethod
    def of_fields(cls, rules: Mapping[str, Any], *, whitelist: Iterable[str]) -> PolicyRules:
        """The rules from a policy's field values by field name (a row read without the ORM)."""
        return cls(
            max_exposure_pct=rules["max_exposure_pct"],
            whitelist=frozenset(whitelist),
            max_risk=rules["max_risk_score"],
            min_interval=timedelta(seconds=rules["min_interval_seconds"]),
            window_start_hour=rules["window_start_hour"],
            window_end_hour=rules["window_end_hour"],
            max_feed_age=timedelta(seconds=rules["max_feed_age_seconds"]),
            max_turnover_pct=rules["max_turnover_pct"],
        )


def turnover_pct(current: dict[str, Decimal], target: dict[str, Decimal]) -> Decimal:
    """Share of the vault that moves: half the sum of absolute changes (what leaves one
    position arrives in another). Idle funds count as a position."""
    names = set(current) | set(target)
    return sum((abs(target.get(n, Decimal(0)) - current.get(n, Decimal(0))) for n in names), Decimal(0)) / 2


def _in_window(hour: int, start: int, end: int) -> bool:
    """[start, end) in UTC hours; a window with start > end runs overnight (22-6)."""
    if start <= end:
        return start <= hour < end
    return hour >= start or hour < end


def window_opens_after(utc: datetime, start: int, end: int) -> datetime | None:
    """The next time after `utc` (UTC) that the window [start, end) opens: the next
    start:00. None for a window that never opens (start == end)."""
    if start == end or not 0 <= start <= 23:
        return None
    opening = utc.replace(hour=start, minute=0, second=0, microsecond=0)
    return opening if opening > utc else opening + timedelta(days=1)


def timing_violations(*, rules: PolicyRules, last_rebalance_at: datetime | None, now: datetime) -> list[Violation]:
    """The timing rules alone (the window, the interval since the last rebalance), each with
    when it clears. They need no positions, so Flow B's execution waits on them before it
    reads any: positions read before a wait could be stale after it."""
    found: list[Violation] = []
    utc = now.astimezone(UTC)  # the window is in UTC hours, whatever zone `now` is in
    if not _in_window(utc.hour, rules.window_start_hour, rules.window_end_hour):
        found.append(
            Violation(
                TIMING,
                f"{utc:%H:%M} UTC is outside the window {rules.window_start_hour}:00-{rules.window_end_hour}:00",
                not_before=window_opens_after(utc, rules.window_start_hour, rules.window_end_hour),
            )
        )
    if last_rebalance_at is not None and now - last_rebalance_at < rules.min_interval:
        wait = rules.min_interval - (now - last_rebalance_at)
        found.append(
            Violation(
                TIMING,
                f"the last rebalance was too recent; the next may run in {int(wait.total_seconds())} s",
                not_before=(last_rebalance_at + rules.min_interval).astimezone(UTC),
            )
        )
    return found


def compliance_check(
    *,
    rules: PolicyRules,
    allocation: dict[str, Decimal],
    risks: dict[str, int],
    current: dict[str, Decimal],
    feed_time: datetime | None,
    last_rebalance_at: datetime | None,
    now: datetime,
) -> ComplianceResult:
    """`allocation` and `current` are % by protocol name (`current` may hold "idle");
    `risks` are the feed's risk scores by protocol."""
    found: list[Violation] = []
    total = sum(allocation.values(), Decimal(0))
    if total != HUNDRED:
        found.append(Violation("allocation", f"allocations sum to {total}%, not 100%"))
    for name, pct in sorted(allocation.items()):
        if pct < 0:
            found.append(Violation("allocation", f"{name} has a negative allocation ({pct}%)"))
        if pct > rules.max_exposure_pct:
            found.append(Violation("exposure", f"{name} at {pct}% exceeds the {rules.max_exposure_pct}% maximum"))
        if name not in rules.whitelist:
            found.append(Violation("whitelist", f"{name} is not whitelisted"))
        if name not in risks:
            found.append(Violation("risk", f"{name} has no risk score in the feed"))
        elif risks[name] > rules.max_risk:
            found.append(Violation("risk", f"{name} has risk {risks[name]}, above the maximum {rules.max_risk}"))
    found.extend(timing_violations(rules=rules, last_rebalance_at=last_rebalance_at, now=now))
    moved = turnover_pct(current, allocation)
    if moved > rules.max_turnover_pct:
        found.append(Violation("turnover", f"{moved:.4f}% of the vault would move; at most {rules.max_turnover_pct}%"))
    if feed_time is None:
        found.append(Violation("feed_age", "no market feed"))
    elif now - feed_time > rules.max_feed_age:
        age = int((now - feed_time).total_seconds())
        found.append(
            Violation("feed_age", f"the feed is {age} s old; at most {int(rules.max_feed_age.total_seconds())} s")
        )
    return ComplianceResult(found)
