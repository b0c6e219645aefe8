"""The timing rules say when they clear (`Violation.not_before`), so Flow B can wait for that
moment; the journal keeps its {"rule", "message"} shape."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.vaults.test_compliance import NOW, RULES, check
from vaults.services.compliance import ComplianceRecord, ComplianceResult, Violation, window_opens_after

DAY = NOW.replace(hour=0, minute=0)  # 2026-01-05 00:00 UTC


def test_the_minimum_interval_clears_one_interval_after_the_last_rebalance() -> None:
    last = NOW - timedelta(minutes=50)
    result = check(last_rebalance_at=last)
    (violation,) = result.violations
    assert violation.not_before == last + timedelta(hours=1) == NOW + timedelta(minutes=10)
    assert violation.not_before.tzinfo is not None
    assert result.clears_at() == NOW + timedelta(minutes=10)


def test_the_interval_clears_at_the_same_instant_whatever_the_zone_of_the_last_rebalance() -> None:
    last = (NOW - timedelta(seconds=5)).astimezone(ZoneInfo("Asia/Tokyo"))
    (violation,) = check(last_rebalance_at=last).violations
    assert violation.not_before == NOW + timedelta(minutes=59, seconds=55)
    assert violation.not_before.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("hour", "minute", "opens"),
    [
        (8, 30, DAY.replace(hour=9)),  # before today's window: today 09:00
        (17, 0, DAY.replace(hour=9) + timedelta(days=1)),  # its end is outside: tomorrow 09:00
        (23, 59, DAY.replace(hour=9) + timedelta(days=1)),
        (0, 0, DAY.replace(hour=9)),
    ],
)
def test_a_day_window_clears_when_it_next_opens(hour: int, minute: int, opens: datetime) -> None:
    rules = replace(RULES, window_start_hour=9, window_end_hour=17)
    (violation,) = check(rules=rules, now=NOW.replace(hour=hour, minute=minute)).violations
    assert violation.rule == "timing" and violation.not_before == opens


@pytest.mark.parametrize(
    ("hour", "minute", "opens"),
    [
        (6, 0, DAY.replace(hour=22)),  # the overnight window 22-6 just closed: tonight 22:00
        (12, 0, DAY.replace(hour=22)),
        (21, 59, DAY.replace(hour=22)),
    ],
)
def test_an_overnight_window_clears_at_its_next_evening_opening(hour: int, minute: int, opens: datetime) -> None:
    rules = replace(RULES, window_start_hour=22, window_end_hour=6)
    assert check(rules=rules, now=NOW.replace(hour=23, minute=0)).ok
    assert check(rules=rules, now=NOW.replace(hour=5, minute=59)).ok
    (violation,) = check(rules=rules, now=NOW.replace(hour=hour, minute=minute)).violations
    assert violation.not_before == opens


def test_the_window_opening_is_in_utc_whatever_the_zone_of_now() -> None:
    rules = replace(RULES, window_start_hour=9, window_end_hour=17)
    paris = NOW.replace(hour=8, minute=30).astimezone(ZoneInfo("Europe/Paris"))  # 09:30 in Paris
    (violation,) = check(rules=rules, now=paris).violations
    assert violation.not_before == DAY.replace(hour=9) and violation.not_before.tzinfo == UTC


def test_a_window_that_never_opens_has_no_time_to_wait_for() -> None:
    assert window_opens_after(NOW, 9, 9) is None
    (violation,) = check(rules=replace(RULES, window_start_hour=9, window_end_hour=9)).violations
    assert violation.rule == "timing" and violation.not_before is None
    assert ComplianceResult([violation]).clears_at() is None


def test_it_clears_when_the_last_timing_rule_does_and_never_while_another_rule_is_broken() -> None:
    rules = replace(RULES, window_start_hour=13, window_end_hour=17)
    both = check(rules=rules, last_rebalance_at=NOW - timedelta(minutes=50))
    assert [v.not_before for v in both.violations] == [DAY.replace(hour=13), NOW + timedelta(minutes=10)]
    assert both.clears_at() == DAY.replace(hour=13)
    with_exposure = ComplianceResult([*both.violations, Violation("exposure", "too much")])
    assert with_exposure.clears_at() is None
    assert check().clears_at() is None  # nothing to wait for: it passes


def test_violations_are_built_as_before_and_journaled_without_the_time() -> None:
    plain = Violation("risk", "too risky")
    assert plain.not_before is None and plain.as_dict() == {"rule": "risk", "message": "too risky"}
    result = check(last_rebalance_at=NOW - timedelta(minutes=50))
    assert result.as_dict() == {
        "ok": False,
        "violations": [{"rule": "timing", "message": "the last rebalance was too recent; the next may run in 600 s"}],
    }
    journaled = dataclasses.asdict(ComplianceRecord.of(result))
    assert journaled == result.as_dict()
