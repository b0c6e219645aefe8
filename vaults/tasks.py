"""Thin beat tasks for vaults: start due rebalances, pull oracle feeds."""

from __future__ import annotations

from celery import shared_task

from vaults.services.oracles import oracles_pull
from vaults.services.rebalance import rebalances_dispatch


@shared_task(name="vaults.rebalance_dispatch", ignore_result=True, expires=30)
def rebalance_dispatch() -> dict[str, int]:
    return {"started": rebalances_dispatch()}


@shared_task(name="vaults.oracles_pull", ignore_result=True, expires=60)
def oracle_pull() -> dict[str, int]:
    result = oracles_pull()
    return {"accepted": result.accepted, "refused": result.refused, "unreachable": result.unreachable}
