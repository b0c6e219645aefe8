"""`bench flow-b`: a Safe vault's proposals, from the last owner signature posted to the
execution confirmed on chain, and the gas of one execTransaction against the same rebalance
sent as plain calls.

One vault held by a 2-of-3 Safe on an anvil started here; proposals alternate between two
allocations, each signed by two owners (eth-account keys, as a wallet signs), one at a time: a
Safe executes its nonces in order. The clock starts before the second signature is posted
(`proposal_sign`) and stops at the Safe transaction's `executed_at`, which the workflow writes
once the relayed execTransaction is mined and the Safe logged ExecutionSuccess.

The baseline for gas, per proposal and untimed: once the proposal is made and the chain is idle
(the previous execution settled), its calls are sent one by one from the Safe's address
(impersonated on anvil, so they act exactly as the Safe's calls do) on a snapshot that is then
reverted; then again on a second snapshot where max allowances were set first, unmeasured, as
Flow A's account holds them. The execTransaction that follows starts from the same state, so
each proposal gives one exact pair."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import connection
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_typing import HexStr
from web3 import Web3

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs, proposal_sign
from approvals.services import proposal_create
from approvals.wallets import wallet_challenge_issue, wallet_register
from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import anvil_gas, common
from orchestrator.engine.models import Phase, WorkflowRun
from relayer.models import Chain, RelayTransaction
from vaults import onchain
from vaults import safe as safe_lib
from vaults.models import OracleKey, Protocol, SafeTransaction
from vaults.services.bootstrap import DEFAULT_PROTOCOLS, chain_bootstrap
from vaults.services.feeds import feed_accept
from vaults.services.policies import policy_activate, policy_draft

TARGETS = (
    {"Aave USDC": "40", "Compound USDC": "0", "Morpho USDC": "60"},
    {"Aave USDC": "0", "Compound USDC": "60", "Morpho USDC": "40"},
)
ENTRIES = [
    {"protocol": "Aave USDC", "apy": "0.05", "tvl": "1000000", "risk": 1},
    {"protocol": "Compound USDC", "apy": "0.04", "tvl": "2000000", "risk": 1},
    {"protocol": "Morpho USDC", "apy": "0.03", "tvl": "500000", "risk": 0},
]
APPROVE_SELECTOR = "0x095ea7b3"  # approve(address,uint256)
EXECUTED_AT = "SELECT executed_at FROM vaults_safetransaction WHERE id = %s AND status = 'executed'"
STOPPED = (Phase.BLOCKED, Phase.FAILED, Phase.DEAD_LETTER)


def _owners(run: str) -> tuple[list[Any], list[Any]]:
    users, keys = [], []
    for i in range(3):
        user = get_user_model().objects.create_user(f"bench-{run}-owner{i}", is_staff=True)
        key = Account.create()
        challenge = wallet_challenge_issue(
            user=user, address=key.address, domain="bench.local", uri="http://bench.local/", chain_id=31337
        )
        signed = key.sign_message(encode_defunct(text=challenge.message)).signature.hex()
        wallet_register(user=user, message=challenge.message, signature="0x" + signed.removeprefix("0x"))
        users.append(user)
        keys.append(key)
    return users, keys


def _signature(key: Any, row: SafeTransaction) -> str:
    typed = safe_lib.SafeTx.from_json(row.tx).typed_data()
    return "0x" + Account.sign_typed_data(key.key, full_message=typed).signature.hex().removeprefix("0x")


def _run_done(row_pk: Any, proposal_pk: int) -> bool:
    """The execution's run completed and the proposal is EXECUTED; a stopped run ends the bench
    with its reason rather than a timeout."""
    run = WorkflowRun.objects.filter(idempotency_key=f"safe-exec:{row_pk}").values("phase", "error").first()
    if run is not None and run["phase"] in STOPPED:
        raise CommandError(f"the execution of Safe transaction {row_pk} stopped ({run['phase']}): {run['error']}")
    done = run is not None and run["phase"] == Phase.COMPLETED
    return done and RebalanceProposal.objects.filter(pk=proposal_pk, status=ProposalStatus.EXECUTED).exists()


def _plain_gas(w3: Web3, row: SafeTransaction) -> tuple[int, int, int, int]:
    """Gas of the row's calls sent one by one from the Safe's address (impersonated), each run
    on a snapshot that is reverted: (with the approvals as the Safe transaction has them, with
    max allowances standing as Flow A's account has them, and how many plain transactions each is).
    Call only while no worker sends to the chain: the revert would undo what it sent."""
    safe = row.vault.safe_address
    calls = safe_lib.calls_of(safe_lib.SafeTx.from_json(row.tx))
    approves = [c for c in calls if c.data.startswith(APPROVE_SELECTOR)]
    others = [c for c in calls if not c.data.startswith(APPROVE_SELECTOR)]
    standing = [safe_lib.Call(to=c.to, value=0, data=onchain.approve_calldata("0x" + c.data[34:74])) for c in approves]
    with anvil_gas.impersonating(w3, safe):
        with anvil_gas.reverted(w3):
            anvil_gas.rpc(w3, "anvil_setBalance", [safe, hex(10**18)])
            with_approvals = anvil_gas.send_as(w3, safe, calls)
        with anvil_gas.reverted(w3):
            anvil_gas.rpc(w3, "anvil_setBalance", [safe, hex(10**18)])
            anvil_gas.send_as(w3, safe, standing)  # set beforehand, not counted
            with_allowances = anvil_gas.send_as(w3, safe, others)
    return with_approvals, with_allowances, len(calls), len(others)


def _executed_at(row_pk: Any, into: list[datetime]) -> bool:
    # The poller shares the machine's two cores with what it measures: one plain SELECT a poll.
    with connection.cursor() as cursor:
        cursor.execute(EXECUTED_AT, [str(row_pk)])
        into.extend(r[0] for r in cursor.fetchall() if r[0] is not None)
    return bool(into)


def _setup(chain: Chain, run_id: str) -> tuple[Any, list[Any], Any]:
    """The Safe vault (2 of 3 owners with registered wallets), its policy and a fresh feed, and
    the operator who proposes."""
    _, keys = _owners(run_id)
    vault = chain_bootstrap(
        chain=chain,
        vault_id=f"bench-safe-{run_id}",
        protocols=DEFAULT_PROTOCOLS,
        assets=10**12,
        say=lambda _: None,
        safe_owners=tuple(k.address for k in keys),
        safe_threshold=2,
    )
    oracle = Account.create()
    oracle_key = OracleKey.objects.create(address=oracle.address, name=f"bench oracle {run_id}")
    policy_activate(
        policy=policy_draft(
            vault=vault,
            max_exposure_pct=Decimal(60),
            max_risk_score=5,
            min_interval_seconds=0,
            max_feed_age_seconds=3600,
            max_turnover_pct=Decimal(100),
            approval_threshold=0,
            whitelist=Protocol.objects.filter(chain=chain, name__in=DEFAULT_PROTOCOLS),
            oracles=[oracle_key],
        )
    )
    feed_accept(payload=_feed(oracle))
    operator = get_user_model().objects.create_user(f"bench-{run_id}-operator", is_staff=True)
    return vault, keys, operator


def run(*, proposals: int, concurrency: int, out: Callable[[str], Any]) -> None:
    common.require_real_services()
    logging.getLogger("approvals").setLevel(logging.WARNING)
    logging.getLogger("vaults").setLevel(logging.WARNING)  # a line per Safe transaction and feed: noise here
    port = common.free_port()
    node = processes.anvil(port=port, log_path=Path(settings.VAR_DIR) / "log" / f"bench-anvil-{port}.log")
    node.start().wait_ready(timeout=30)
    url = f"http://127.0.0.1:{port}"
    chain, _ = Chain.objects.update_or_create(
        chain_id=31337, defaults={"name": "bench-anvil", "rpc_url": url, "confirmations": 1, "poll_interval": 0.2}
    )
    w3 = Web3(Web3.HTTPProvider(url))
    run_id = uuid.uuid4().hex[:6]
    out(f"bench flow-b: {proposals} proposals on a 2-of-3 Safe on anvil at {url}")
    out(f"workers: one on 'workflows' and one on 'relay,triggers', prefork concurrency={concurrency} each")
    latencies: list[float] = []
    sign_ms: list[float] = []
    safe_gas: list[int] = []
    plain: list[int] = []
    standing: list[int] = []
    plain_txs: list[tuple[int, int]] = []
    try:
        vault, keys, operator = _setup(chain, run_id)
        with (
            common.worker(name="flow-b", concurrency=concurrency, queues="workflows"),
            common.worker(name="flow-b-relay", concurrency=concurrency, queues="relay,triggers"),
        ):
            for i in range(proposals):
                proposal = proposal_create(vault=vault, allocation=TARGETS[i % 2], proposer=operator)
                row, _ = proposal_safe_txs(proposal)
                if row is None:
                    raise CommandError(f"{proposal.proposal_id} has no Safe transaction")
                with_approvals, with_allowances, *txs = _plain_gas(w3, row)
                plain.append(with_approvals)
                standing.append(with_allowances)
                plain_txs.append((txs[0], txs[1]))
                proposal_sign(proposal=proposal, signature=_signature(keys[0], row), decision="approve")
                last = _signature(keys[1], row)
                started = time.time()
                proposal_sign(proposal=proposal, signature=last, decision="approve")
                sign_ms.append((time.time() - started) * 1000)
                executed: list[datetime] = []
                common.wait_until(partial(_executed_at, row.pk, executed), timeout=60, what=f"proposal {i} to execute")
                latencies.append((executed[0].timestamp() - started) * 1000)
                # Untimed: the next proposal starts from a settled vault and an idle chain.
                common.wait_until(partial(_run_done, row.pk, proposal.pk), timeout=60, what=f"proposal {i}'s run")
                relay = RelayTransaction.objects.get(safe_tx=row.pk)
                safe_gas.append(int(w3.eth.get_transaction_receipt(HexStr(relay.mined_hash))["gasUsed"]))
                if (i + 1) % 20 == 0:
                    out(f"  {i + 1}/{proposals}: p50 so far {common.percentile(latencies, 50):.0f} ms")
    finally:
        node.stop()
    _report(out, latencies, sign_ms, safe_gas, plain, standing, plain_txs)


def _span(values: list[int]) -> str:
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _gas_row(sent_as: str, txs: str, gas: list[int], ratio: str) -> dict[str, Any]:
    return {
        "rebalance sent as": sent_as,
        "txs": txs,
        "gas p50": round(common.median(gas)),
        "gas min": min(gas),
        "gas max": max(gas),
        "Safe / this (p50)": ratio,
    }


def _report(
    out: Callable[[str], Any],
    latencies: list[float],
    sign_ms: list[float],
    safe_gas: list[int],
    plain: list[int],
    standing: list[int],
    plain_txs: list[tuple[int, int]],
) -> None:
    rows = [
        {
            "path": "last signature -> execTransaction confirmed",
            "n": len(latencies),
            "p50 ms": common.percentile(latencies, 50),
            "p99 ms": common.percentile(latencies, 99),
            "max ms": max(latencies),
        },
        {
            "path": "  of which proposal_sign (the last signature)",
            "n": len(sign_ms),
            "p50 ms": common.percentile(sign_ms, 50),
            "p99 ms": common.percentile(sign_ms, 99),
            "max ms": max(sign_ms),
        },
    ]
    out("")
    common.table(rows, out)
    # Each ratio is taken per proposal (the same calls from the same state), then its median.
    over_plain = common.median([s / p for s, p in zip(safe_gas, plain, strict=True)])
    over_standing = common.median([s / p for s, p in zip(safe_gas, standing, strict=True)])
    out("")
    out(f"gas per rebalance over the {len(safe_gas)} proposals, each baseline from the proposal's own state:")
    common.table(
        [
            _gas_row("one execTransaction (Safe, MultiSend, approvals inside)", "1", safe_gas, "1.000"),
            _gas_row(
                "plain calls from one address, the same approvals",
                _span([n for n, _ in plain_txs]),
                plain,
                f"{over_plain:.3f}",
            ),
            _gas_row(
                "plain calls, max allowances standing (as Flow A)",
                _span([n for _, n in plain_txs]),
                standing,
                f"{over_standing:.3f}",
            ),
        ],
        out,
    )
    out(
        common.result_line(
            "flow-b",
            {
                "p50_ms": rows[0]["p50 ms"],
                "p99_ms": rows[0]["p99 ms"],
                "proposals": len(latencies),
                "safe_gas": round(common.median(safe_gas)),
                "plain_gas": round(common.median(plain)),
                "plain_gas_standing_allowance": round(common.median(standing)),
                "safe_over_plain": f"{over_plain:.3f}",
                "safe_over_plain_standing_allowance": f"{over_standing:.3f}",
            },
        )
    )


def _feed(oracle: Any) -> dict[str, Any]:
    from django.utils import timezone
    from eth_account.messages import encode_typed_data

    from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES

    now = timezone.now()
    message = {"oracle": oracle.address, "timestamp": int(now.timestamp()), "entries": ENTRIES}
    signed = oracle.sign_message(
        encode_typed_data(domain_data=FEED_DOMAIN, message_types=FEED_TYPES, message_data=message)
    )
    return {
        "oracle": oracle.address,
        "timestamp": now.isoformat(),
        "entries": ENTRIES,
        "signature": "0x" + signed.signature.hex().removeprefix("0x"),
    }
