"""Allocation strategies: feed + policy -> target allocation in %, summing to exactly 100.

Strategies are plain functions registered by name; a vault names its strategy.

`risk-adjusted-yield` (the default) is deterministic:
1. Eligible protocols are those in the feed that the policy whitelists, with risk at most the
   policy's maximum.
2. Each is scored apy / (1 + risk): yield per unit of risk (risk 0 scores its plain apy).
3. In order of score (ties: by name), each gets as much as it may, the policy's maximum
   exposure, until 100% is placed. The last one placed gets the remainder.
4. If the eligible protocols cannot hold 100% under the caps, there is no compliant
   allocation and NoCompliantAllocation is raised: nothing is rebalanced.
Percentages are Decimals with 4 places; the sum is exactly 100.

`equal-weight` splits 100% equally over the eligible protocols (the first ones by name take
the rounding remainder), refusing when an equal share would break the exposure cap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from orchestrator.infra.errors import DomainError

HUNDRED = Decimal(100)
QUANTUM = Decimal("0.0001")


class NoCompliantAllocation(DomainError):
    """The policy leaves no way to place 100% of the vault."""

    code = "no_compliant_allocation"
    http_status = 422


@dataclass(frozen=True)
class Limits:
    whitelist: frozenset[str]
    max_exposure_pct: Decimal
    max_risk: int


@dataclass(frozen=True)
class Opportunity:
    protocol: str
    apy: Decimal
    risk: int


Strategy = Callable[[list[Opportunity], Limits], dict[str, Decimal]]
STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str) -> Callable[[Strategy], Strategy]:
    def register(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return register


def allocate(*, name: str, opportunities: list[Opportunity], limits: Limits) -> dict[str, Decimal]:
    try:
        fn = STRATEGIES[name]
    except KeyError:
        raise NoCompliantAllocation(f"unknown strategy {name!r}") from None
    return fn(opportunities, limits)


def _eligible(opportunities: list[Opportunity], limits: Limits) -> list[Opportunity]:
    return [o for o in opportunities if o.protocol in limits.whitelist and o.risk <= limits.max_risk and o.apy >= 0]


@strategy("risk-adjusted-yield")
def risk_adjusted_yield(opportunities: list[Opportunity], limits: Limits) -> dict[str, Decimal]:
    cap = limits.max_exposure_pct.quantize(QUANTUM, rounding=ROUND_DOWN)
    ranked = sorted(_eligible(opportunities, limits), key=lambda o: (-(o.apy / (1 + o.risk)), o.protocol))
    allocation: dict[str, Decimal] = {}
    remaining = HUNDRED
    for opportunity in ranked:
        if remaining <= 0:
            break
        share = min(cap, remaining)
        if share > 0:
            allocation[opportunity.protocol] = share
            remaining -= share
    if remaining > 0:
        raise NoCompliantAllocation(
            f"{len(ranked)} eligible protocol(s) at most {cap}% each cannot hold 100% of the vault"
        )
    return allocation


@strategy("equal-weight")
def equal_weight(opportunities: list[Opportunity], limits: Limits) -> dict[str, Decimal]:
    eligible = sorted(o.protocol for o in _eligible(opportunities, limits))
    if not eligible:
        raise NoCompliantAllocation("no eligible protocol")
    share = (HUNDRED / len(eligible)).quantize(QUANTUM, rounding=ROUND_DOWN)
    allocation = dict.fromkeys(eligible, share)
    leftover = HUNDRED - share * len(eligible)
    for name in eligible:
        if leftover <= 0:
            break
        allocation[name] += QUANTUM
        leftover -= QUANTUM
    if max(allocation.values()) > limits.max_exposure_pct:
        raise NoCompliantAllocation(f"an equal share exceeds the {limits.max_exposure_pct}% cap")
    return allocation
