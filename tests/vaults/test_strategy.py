"""Allocation strategies: 100% placed exactly, within the policy, the same answer every time."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from vaults.services.strategy import (
    HUNDRED,
    QUANTUM,
    STRATEGIES,
    Limits,
    NoCompliantAllocation,
    Opportunity,
    allocate,
)

NAMES = ["Aave USDC", "Compound USDC", "Morpho USDC", "Euler USDC", "Spark USDC", "Fluid USDC", "Yearn USDC"]

opportunity_lists = st.lists(
    st.builds(
        Opportunity,
        protocol=st.sampled_from(NAMES) | st.text(min_size=1, max_size=12),
        apy=st.decimals(min_value=0, max_value=10**6, places=4, allow_nan=False, allow_infinity=False),
        risk=st.integers(min_value=0, max_value=10),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda o: o.protocol,
)


# Caps that divide 100 evenly (or nearly) make placements likely; any cap is still drawn.
ROUND_CAPS = [Decimal(c) for c in ("100", "50", "33.3334", "33.3333", "25", "20", "12.5", "10")]


@st.composite
def limits_for(draw: st.DrawFn, opportunities: list[Opportunity]) -> Limits:
    names = [o.protocol for o in opportunities]
    listed = draw(st.just(set(names)) | st.sets(st.sampled_from(names))) if names else set()
    unlisted = draw(st.sets(st.sampled_from(NAMES), max_size=3))  # whitelisted, absent from the feed
    return Limits(
        whitelist=frozenset(listed | unlisted),
        max_exposure_pct=draw(
            st.sampled_from(ROUND_CAPS)
            | st.decimals(min_value=1, max_value=100, places=4, allow_nan=False, allow_infinity=False)
        ),
        max_risk=draw(st.just(10) | st.integers(min_value=0, max_value=10)),
    )


def limits(cap: str = "100", *, whitelist: list[str] | None = None, max_risk: int = 10) -> Limits:
    names = whitelist if whitelist is not None else NAMES
    return Limits(whitelist=frozenset(names), max_exposure_pct=Decimal(cap), max_risk=max_risk)


def opp(name: str, apy: str, risk: int) -> Opportunity:
    return Opportunity(protocol=name, apy=Decimal(apy), risk=risk)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=400, database=None, deadline=None)
@given(data=st.data(), opportunities=opportunity_lists)
def test_risk_adjusted_yield_places_exactly_100_percent_within_the_policy_or_refuses(
    data: st.DataObject, opportunities: list[Opportunity]
) -> None:
    policy = data.draw(limits_for(opportunities))
    eligible = {o.protocol: o for o in opportunities if o.protocol in policy.whitelist and o.risk <= policy.max_risk}
    try:
        allocation = allocate(name="risk-adjusted-yield", opportunities=opportunities, limits=policy)
    except NoCompliantAllocation:
        # Refused only when the eligible protocols really cannot hold 100% under the cap.
        assert len(eligible) * policy.max_exposure_pct < HUNDRED
        event("refused")
        return
    event(f"placed over {len(allocation)} protocol(s)")
    assert sum(allocation.values(), Decimal(0)) == HUNDRED
    for name, pct in allocation.items():
        assert name in eligible, f"{name} is not whitelisted or too risky"
        assert name in policy.whitelist
        assert eligible[name].risk <= policy.max_risk
        assert Decimal(0) < pct <= policy.max_exposure_pct
        assert pct == pct.quantize(QUANTUM)


@settings(max_examples=300, database=None, deadline=None)
@given(data=st.data(), opportunities=opportunity_lists)
def test_risk_adjusted_yield_gives_the_same_allocation_whatever_the_order_of_the_feed(
    data: st.DataObject, opportunities: list[Opportunity]
) -> None:
    policy = data.draw(limits_for(opportunities))
    shuffled = data.draw(st.permutations(opportunities))

    def run(feed: list[Opportunity]) -> list[tuple[str, Decimal]] | None:
        try:
            return list(allocate(name="risk-adjusted-yield", opportunities=feed, limits=policy).items())
        except NoCompliantAllocation:
            return None

    first = run(opportunities)
    assert run(shuffled) == first
    assert run(list(reversed(opportunities))) == first
    assert run(opportunities) == first


@settings(max_examples=300, database=None, deadline=None)
@given(data=st.data(), opportunities=opportunity_lists)
def test_equal_weight_places_exactly_100_percent_in_near_equal_shares_within_the_cap_or_refuses(
    data: st.DataObject, opportunities: list[Opportunity]
) -> None:
    policy = data.draw(limits_for(opportunities))
    eligible = [o.protocol for o in opportunities if o.protocol in policy.whitelist and o.risk <= policy.max_risk]
    # The largest share of a split within one quantum: 100 / n rounded up to 4 places.
    largest = (HUNDRED / len(eligible)).quantize(QUANTUM, rounding=ROUND_CEILING) if eligible else None
    try:
        allocation = allocate(name="equal-weight", opportunities=opportunities, limits=policy)
    except NoCompliantAllocation:
        assert largest is None or largest > policy.max_exposure_pct
        event("refused")
        return
    event("placed")
    assert largest is not None and largest <= policy.max_exposure_pct
    assert sorted(allocation) == sorted(eligible)
    assert sum(allocation.values(), Decimal(0)) == HUNDRED
    assert max(allocation.values()) - min(allocation.values()) <= QUANTUM
    assert max(allocation.values()) <= policy.max_exposure_pct


# --- examples -----------------------------------------------------------------------------------


def test_it_ranks_by_apy_per_unit_of_risk_and_fills_each_to_the_cap_in_that_order() -> None:
    feed = [
        opp("Aave USDC", "10", 4),  # 10 / 5 = 2
        opp("Compound USDC", "3", 0),  # risk 0 scores its plain apy: 3
        opp("Euler USDC", "6", 2),  # 6 / 3 = 2, ties with Aave: Aave first by name
        opp("Morpho USDC", "8", 1),  # 8 / 2 = 4
        opp("Spark USDC", "50", 9),  # the best score but too risky
        opp("Unlisted USDC", "99", 0),  # the best score but not whitelisted
    ]
    allocation = allocate(
        name="risk-adjusted-yield",
        opportunities=feed,
        limits=limits("30", whitelist=[*NAMES], max_risk=8),
    )
    assert list(allocation.items()) == [
        ("Morpho USDC", Decimal(30)),
        ("Compound USDC", Decimal(30)),
        ("Aave USDC", Decimal(30)),
        ("Euler USDC", Decimal(10)),
    ]


def test_it_breaks_a_tie_in_score_by_protocol_name() -> None:
    feed = [opp("Morpho USDC", "4", 1), opp("Aave USDC", "2", 0), opp("Compound USDC", "6", 2)]
    allocation = allocate(name="risk-adjusted-yield", opportunities=feed, limits=limits("40"))
    assert list(allocation.items()) == [
        ("Aave USDC", Decimal(40)),
        ("Compound USDC", Decimal(40)),
        ("Morpho USDC", Decimal(20)),
    ]


def test_it_puts_everything_in_the_best_protocol_when_the_cap_is_100() -> None:
    feed = [opp("Aave USDC", "0.05", 1), opp("Compound USDC", "0.04", 0)]
    allocation = allocate(name="risk-adjusted-yield", opportunities=feed, limits=limits("100"))
    assert allocation == {"Compound USDC": Decimal(100)}


def test_it_gives_the_last_protocol_the_remainder_of_a_cap_with_four_places() -> None:
    feed = [opp("Aave USDC", "3", 0), opp("Compound USDC", "2", 0), opp("Morpho USDC", "1", 0)]
    allocation = allocate(name="risk-adjusted-yield", opportunities=feed, limits=limits("33.3334"))
    assert list(allocation.values()) == [Decimal("33.3334"), Decimal("33.3334"), Decimal("33.3332")]
    assert sum(allocation.values()) == HUNDRED


def test_it_refuses_when_the_eligible_protocols_cannot_hold_100_percent_under_the_cap() -> None:
    feed = [opp("Aave USDC", "5", 1), opp("Compound USDC", "4", 1), opp("Morpho USDC", "3", 1)]
    with pytest.raises(NoCompliantAllocation, match="cannot hold 100%"):
        allocate(name="risk-adjusted-yield", opportunities=feed, limits=limits("33.3333"))


def test_it_refuses_when_no_protocol_is_eligible() -> None:
    feed = [opp("Aave USDC", "5", 7), opp("Unlisted USDC", "4", 0)]
    with pytest.raises(NoCompliantAllocation):
        allocate(name="risk-adjusted-yield", opportunities=feed, limits=limits(max_risk=6))
    with pytest.raises(NoCompliantAllocation):
        allocate(name="risk-adjusted-yield", opportunities=[], limits=limits())


def test_equal_weight_splits_100_over_three_with_the_first_by_name_taking_the_remainder() -> None:
    feed = [opp("Morpho USDC", "9", 0), opp("Aave USDC", "1", 0), opp("Compound USDC", "5", 0)]
    allocation = allocate(name="equal-weight", opportunities=feed, limits=limits("33.3334"))
    assert allocation == {
        "Aave USDC": Decimal("33.3334"),
        "Compound USDC": Decimal("33.3333"),
        "Morpho USDC": Decimal("33.3333"),
    }
    assert sum(allocation.values()) == HUNDRED


def test_equal_weight_spreads_a_remainder_of_several_quanta_over_the_first_protocols() -> None:
    feed = [opp(name, "1", 0) for name in NAMES]  # 100 / 7 = 14.2857 remainder 0.0001
    allocation = allocate(name="equal-weight", opportunities=feed, limits=limits("15"))
    assert sum(allocation.values()) == HUNDRED
    assert allocation[sorted(NAMES)[0]] == Decimal("14.2858")
    assert all(allocation[name] == Decimal("14.2857") for name in sorted(NAMES)[1:])


def test_equal_weight_refuses_when_an_equal_share_breaks_the_cap() -> None:
    feed = [opp("Aave USDC", "1", 0), opp("Compound USDC", "1", 0), opp("Morpho USDC", "1", 0)]
    with pytest.raises(NoCompliantAllocation, match="cap"):
        allocate(name="equal-weight", opportunities=feed, limits=limits("33.3333"))
    with pytest.raises(NoCompliantAllocation, match="no eligible protocol"):
        allocate(name="equal-weight", opportunities=feed, limits=limits(whitelist=[]))


def test_an_unknown_strategy_name_raises_no_compliant_allocation() -> None:
    assert "no-such-strategy" not in STRATEGIES
    with pytest.raises(NoCompliantAllocation, match="unknown strategy 'no-such-strategy'"):
        allocate(name="no-such-strategy", opportunities=[opp("Aave USDC", "1", 0)], limits=limits())
