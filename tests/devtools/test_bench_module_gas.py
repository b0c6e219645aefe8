"""`bench flow-a`'s gas section on an anvil of its own: the Safe, its module and policy set up
as the bench has them, every case sent three ways from the same state, and the chain left as the
setup left it."""

from __future__ import annotations

from typing import Any

from web3 import Web3

from orchestrator.devtools.benchmarks import common, module_gas
from tests.conftest import AnvilFactory
from vaults import module as vpm
from vaults import onchain
from vaults import safe as safe_lib


def _state(bed: module_gas.Bed) -> tuple[Any, ...]:
    held = onchain.positions(w3=bed.w3, account=bed.safe, asset=bed.asset, protocols=bed.protocols)
    return (
        held,
        safe_lib.safe_state(bed.w3, bed.safe).nonce,
        vpm.module_state(bed.w3, bed.module).nonce,
        bed.w3.eth.get_transaction_count(bed.relayer),
    )


def test_the_gas_section_measures_each_rebalance_three_ways_from_one_state(anvils: AnvilFactory) -> None:
    w3 = Web3(Web3.HTTPProvider(anvils.start()))
    bed = module_gas.setup(w3)
    assert vpm.module_enabled(w3, safe=bed.safe, module=bed.module)
    state = vpm.module_state(w3, bed.module)
    assert (state.operator, state.policy_hash, state.nonce) == (bed.operator.address, module_gas.POLICY_HASH, 1)
    assert len(state.allowed) == 7  # approve on the asset, deposit and withdraw on each of three
    before = _state(bed)
    held = before[0]
    assert held.by_protocol == {name: module_gas.POSITION for name in "ABC"}
    assert held.idle == module_gas.FUNDS - 3 * module_gas.POSITION

    rows = module_gas.measure(bed)

    assert _state(bed) == before  # every way was reverted
    assert [(r["rebalance"], r["actions"], r["calls"]) for r in rows] == [
        (what, actions, len(calls)) for what, actions, calls in module_gas.cases(bed)
    ]
    for row in rows:
        assert row["plain gas"] >= row["plain, allowances standing"] > 21_000 * row["actions"]
        assert row["module / action"] == round(row["module gas"] / row["actions"])
    withdraw, deposit = rows[0], rows[1]
    # One call: the module pays a transaction's base cost like the plain one, and its checks on top.
    assert withdraw["module gas"] > withdraw["plain gas"]
    # Standing allowances leave the approve out: one transaction fewer than the deposit's calls.
    assert deposit["plain gas"] - deposit["plain, allowances standing"] > 21_000

    figures = module_gas.figures(rows)
    assert figures["module_gas_per_action"] == round(common.median([r["module gas"] / r["actions"] for r in rows]))
    typical = next(r for r in rows if r["rebalance"] == module_gas.TYPICAL)
    assert figures["module_over_plain"] == typical["module / plain"]
    lines: list[str] = []
    module_gas.report(rows, lines.append)
    assert common.result_line("flow-a", figures).startswith("RESULT flow-a module_gas_per_action=")
    assert any(line.startswith(module_gas.TYPICAL) for line in lines)
