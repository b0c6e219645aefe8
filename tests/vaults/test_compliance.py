"""The compliance check: each rule on its own, and every broken rule reported together."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from vaults.services.compliance import ComplianceResult, PolicyRules, compliance_check, turnover_pct

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

RULES = PolicyRules(
    max_exposure_pct=Decimal(50),
    whitelist=frozenset({"Aave USDC", "Compound USDC", "Morpho USDC", "Spark USDC"}),
    max_risk=5,
    min_interval=timedelta(hours=1),
    window_start_hour=0,
    window_end_hour=24,
    max_feed_age=timedelta(seconds=300),
    max_turnover_pct=Decimal(100),
)


def check(**overrides: Any) -> ComplianceResult:
    """A compliant rebalance (all idle funds into Aave and Compound, half each), changed by
    `overrides`."""
    now = overrides.get("now", NOW)
    values: dict[str, Any] = {
        "rules": RULES,
        "allocation": {"Aave USDC": Decimal(50), "Compound USDC": Decimal(50)},
        "risks": {"Aave USDC": 2, "Compound USDC": 3, "Morpho USDC": 4, "Spark USDC": 1},
        "current": {"idle": Decimal(100)},
        "feed_time": now - timedelta(seconds=60),
        "last_rebalance_at": now - timedelta(hours=2),
        "now": now,
    }
    values.update(overrides)
    return compliance_check(**values)


def rules_of(result: ComplianceResult) -> list[str]:
    return [v.rule for v in result.violations]


def test_a_compliant_rebalance_is_ok_with_no_violation() -> None:
    result = check()
    assert result.ok
    assert result.violations == []
    assert result.summary() == "compliant"
    assert result.as_dict() == {"ok": True, "violations": []}


def test_a_first_rebalance_without_a_previous_one_is_ok() -> None:
    assert check(last_rebalance_at=None).ok


def test_a_position_above_the_maximum_exposure_breaks_only_the_exposure_rule() -> None:
    result = check(allocation={"Aave USDC": Decimal("50.0001"), "Compound USDC": Decimal("49.9999")})
    assert rules_of(result) == ["exposure"]
    assert not result.ok
    assert "Aave USDC at 50.0001% exceeds the 50% maximum" in result.violations[0].message


def test_a_position_exactly_at_the_maximum_exposure_is_allowed() -> None:
    assert check(allocation={"Aave USDC": Decimal("50.0000"), "Compound USDC": Decimal(50)}).ok


def test_a_protocol_off_the_whitelist_breaks_only_the_whitelist_rule() -> None:
    result = check(
        allocation={"Aave USDC": Decimal(50), "Unlisted USDC": Decimal(50)},
        risks={"Aave USDC": 2, "Unlisted USDC": 1},
    )
    assert rules_of(result) == ["whitelist"]
    assert result.violations[0].message == "Unlisted USDC is not whitelisted"


def test_a_protocol_riskier_than_the_maximum_breaks_only_the_risk_rule() -> None:
    result = check(risks={"Aave USDC": 2, "Compound USDC": 6})
    assert rules_of(result) == ["risk"]
    assert result.violations[0].message == "Compound USDC has risk 6, above the maximum 5"


def test_a_protocol_at_the_maximum_risk_is_allowed() -> None:
    assert check(risks={"Aave USDC": 5, "Compound USDC": 5}).ok


def test_a_protocol_without_a_risk_score_in_the_feed_breaks_only_the_risk_rule() -> None:
    result = check(risks={"Aave USDC": 2})
    assert rules_of(result) == ["risk"]
    assert result.violations[0].message == "Compound USDC has no risk score in the feed"


@pytest.mark.parametrize("hour", [8, 17, 23])
def test_a_rebalance_outside_the_utc_window_breaks_only_the_timing_rule(hour: int) -> None:
    rules = replace(RULES, window_start_hour=9, window_end_hour=17)
    result = check(rules=rules, now=NOW.replace(hour=hour, minute=30))
    assert rules_of(result) == ["timing"]
    assert "outside the window 9:00-17:00" in result.violations[0].message


@pytest.mark.parametrize("hour", [9, 16])
def test_a_rebalance_inside_the_window_including_its_first_hour_is_allowed(hour: int) -> None:
    rules = replace(RULES, window_start_hour=9, window_end_hour=17)
    assert check(rules=rules, now=NOW.replace(hour=hour, minute=59)).ok


def test_the_window_is_in_utc_hours_whatever_the_zone_of_now() -> None:
    rules = replace(RULES, window_start_hour=9, window_end_hour=17)
    paris = ZoneInfo("Europe/Paris")
    # 12:00 UTC is 13:00 in Paris in January: inside the window either way.
    assert check(rules=rules, now=NOW.astimezone(paris)).ok
    # 08:30 UTC is 09:30 in Paris: outside the UTC window although Paris's hour is inside it.
    early = NOW.replace(hour=8, minute=30)
    result = check(rules=rules, now=early.astimezone(paris))
    assert rules_of(result) == ["timing"]
    assert "08:30 UTC" in result.violations[0].message


def test_a_rebalance_sooner_than_the_minimum_interval_breaks_only_the_timing_rule() -> None:
    result = check(last_rebalance_at=NOW - timedelta(minutes=50))
    assert rules_of(result) == ["timing"]
    assert result.violations[0].message == "the last rebalance was too recent; the next may run in 600 s"


def test_a_rebalance_exactly_one_interval_after_the_last_is_allowed() -> None:
    assert check(last_rebalance_at=NOW - timedelta(hours=1)).ok


def test_moving_more_of_the_vault_than_the_maximum_turnover_breaks_only_the_turnover_rule() -> None:
    result = check(rules=replace(RULES, max_turnover_pct=Decimal(20)))
    assert rules_of(result) == ["turnover"]
    assert result.violations[0].message == "100.0000% of the vault would move; at most 20%"


def test_moving_exactly_the_maximum_turnover_is_allowed() -> None:
    result = check(
        rules=replace(RULES, max_turnover_pct=Decimal(20)),
        current={"Aave USDC": Decimal(30), "Compound USDC": Decimal(50), "idle": Decimal(20)},
    )
    assert result.ok


def test_a_feed_older_than_the_maximum_age_breaks_only_the_feed_age_rule() -> None:
    result = check(feed_time=NOW - timedelta(seconds=301))
    assert rules_of(result) == ["feed_age"]
    assert result.violations[0].message == "the feed is 301 s old; at most 300 s"


def test_a_feed_exactly_at_the_maximum_age_is_allowed() -> None:
    assert check(feed_time=NOW - timedelta(seconds=300)).ok


def test_no_feed_at_all_breaks_only_the_feed_age_rule() -> None:
    result = check(feed_time=None)
    assert rules_of(result) == ["feed_age"]
    assert result.violations[0].message == "no market feed"


@pytest.mark.parametrize(
    ("aave", "compound", "total"),
    [("50", "49.9999", "99.9999"), ("50", "50.0001", "100.0001"), ("40", "40", "80")],
)
def test_an_allocation_that_does_not_sum_to_100_breaks_only_the_allocation_rule(
    aave: str, compound: str, total: str
) -> None:
    result = check(
        allocation={"Aave USDC": Decimal(aave), "Compound USDC": Decimal(compound)},
        current={"Aave USDC": Decimal(50), "Compound USDC": Decimal(50)},
        rules=replace(RULES, max_exposure_pct=Decimal("50.0001")),
    )
    assert rules_of(result) == ["allocation"]
    assert result.violations[0].message == f"allocations sum to {total}%, not 100%"


def test_a_negative_allocation_breaks_only_the_allocation_rule() -> None:
    allocation = {
        "Aave USDC": Decimal(50),
        "Compound USDC": Decimal(40),
        "Morpho USDC": Decimal(20),
        "Spark USDC": Decimal(-10),
    }
    current = {"Aave USDC": Decimal(50), "Compound USDC": Decimal(40), "Morpho USDC": Decimal(10)}
    result = check(allocation=allocation, current=current)
    assert rules_of(result) == ["allocation"]
    assert result.violations[0].message == "Spark USDC has a negative allocation (-10%)"


def test_a_rebalance_breaking_several_rules_gets_every_violation_not_only_the_first() -> None:
    rules = replace(RULES, window_start_hour=9, window_end_hour=17, max_turnover_pct=Decimal(50))
    now = NOW.replace(hour=20)
    result = check(
        rules=rules,
        allocation={"Aave USDC": Decimal(70), "Unlisted USDC": Decimal(40)},
        risks={"Aave USDC": 9},
        now=now,
        last_rebalance_at=now - timedelta(minutes=10),
        feed_time=now - timedelta(hours=1),
    )
    assert not result.ok
    assert sorted(rules_of(result)) == sorted(
        [
            "allocation",  # 110%
            "exposure",  # Aave at 70%
            "risk",  # Aave at 9
            "whitelist",  # Unlisted USDC
            "risk",  # Unlisted USDC has no score
            "timing",  # 20:00 is outside 9-17
            "timing",  # 10 minutes after the last one
            "turnover",  # 105% moves
            "feed_age",  # an hour old
        ]
    )
    body = result.as_dict()
    assert body["ok"] is False
    assert len(body["violations"]) == 9
    assert all(set(v) == {"rule", "message"} for v in body["violations"])
    summary = result.summary()
    for rule in ("allocation", "exposure", "whitelist", "risk", "timing", "turnover", "feed_age"):
        assert f"{rule}: " in summary


@pytest.mark.parametrize(
    ("current", "target", "moved"),
    [
        ({"idle": "100"}, {"Aave USDC": "100"}, "100"),
        ({"idle": "100"}, {"Aave USDC": "60", "Compound USDC": "40"}, "100"),
        ({"Aave USDC": "50", "Compound USDC": "50"}, {"Aave USDC": "50", "Compound USDC": "50"}, "0"),
        ({"Aave USDC": "50", "Compound USDC": "50"}, {"Aave USDC": "30", "Compound USDC": "70"}, "20"),
        ({"idle": "20", "Aave USDC": "80"}, {"Aave USDC": "50", "Compound USDC": "50"}, "50"),
        ({"Aave USDC": "100"}, {"Compound USDC": "100"}, "100"),
        ({}, {}, "0"),
    ],
)
def test_turnover_is_half_the_sum_of_absolute_changes_with_idle_as_a_position(
    current: dict[str, str], target: dict[str, str], moved: str
) -> None:
    result = turnover_pct(
        {k: Decimal(v) for k, v in current.items()},
        {k: Decimal(v) for k, v in target.items()},
    )
    assert result == Decimal(moved)
