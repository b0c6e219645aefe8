"""`bench flow-a`: latency from a signed feed's arrival to its signed ExecutionIntent stored.

50 vaults (one oracle each) on an anvil started here, share three ERC-4626 protocols; 500 feeds
go round-robin over them, one at a time, alternating the protocol they favour so that every
feed leads to a new intent. The intents are really relayed in the background, as in
production. Beside it, in the same run: a bare Celery round trip (send a task, see it done).
First, on the same anvil and before the workers start: the gas of rebalances through a Safe's
policy module against the same calls sent plainly and by the Safe (module_gas)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from web3 import Web3

from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import common, module_gas
from orchestrator.devtools.benchmarks.module_vaults import bench_policy, module_vaults
from orchestrator.devtools.benchmarks.tasks import DONE_KEY, bench_done
from orchestrator.engine.models import StepRun, WorkflowRun
from relayer.models import Chain
from vaults.models import ExecutionIntent, Vault
from vaults.services.bootstrap import chain_bootstrap
from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES, feed_accept
from vaults.services.intents import intent_in_flight

PROTOCOLS = ("Aave USDC", "Compound USDC", "Morpho USDC")
FAVOUR = [
    [("Aave USDC", "0.05", 1), ("Compound USDC", "0.04", 1), ("Morpho USDC", "0.03", 0)],  # Morpho+Aave
    [("Aave USDC", "0.04", 1), ("Compound USDC", "0.05", 1), ("Morpho USDC", "0.03", 0)],  # Morpho+Compound
]


def _feed(oracle: LocalAccount, variant: int) -> dict[str, Any]:
    entries = [{"protocol": p, "apy": apy, "tvl": "1000000", "risk": r} for p, apy, r in FAVOUR[variant]]
    now = timezone.now()
    message = {"oracle": oracle.address, "timestamp": int(now.timestamp()), "entries": entries}
    signed = oracle.sign_message(
        encode_typed_data(domain_data=FEED_DOMAIN, message_types=FEED_TYPES, message_data=message)
    )
    return {
        "oracle": oracle.address,
        "timestamp": now.isoformat(),
        "entries": entries,
        "signature": "0x" + signed.signature.hex().removeprefix("0x"),
    }


def _vaults(chain: Chain, count: int, out: Callable[[str], Any]) -> list[tuple[Vault, LocalAccount]]:
    run = uuid.uuid4().hex[:6]
    made = []
    for i in range(count):
        vault = chain_bootstrap(
            chain=chain, vault_id=f"bench-{run}-{i:03d}", protocols=PROTOCOLS, assets=10**12, say=lambda _: None
        )
        oracle = Account.create()
        bench_policy(vault, oracle=oracle, name=f"bench oracle {run}-{i}", protocols=list(PROTOCOLS))
        made.append((vault, oracle))
        if (i + 1) % 10 == 0:
            out(f"  {i + 1}/{count} vaults bootstrapped")
    return made


def _settled(vault_pk: int) -> bool:
    return intent_in_flight(vault_id=vault_pk) is None


def _bare_round_trips(count: int) -> list[float]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, decode_responses=True)
    client.delete(DONE_KEY)
    latencies = []
    for _ in range(count):
        key = uuid.uuid4().hex
        started = time.time()
        bench_done.apply_async(args=(key,), queue="workflows")
        item = client.blpop([DONE_KEY], timeout=10)
        if item is None:
            raise RuntimeError("bare task did not finish")
        latencies.append((float(item[1].split()[1]) - started) * 1000)
    return latencies


def ratios(flow: dict[str, Any], bare: dict[str, Any]) -> dict[str, float]:
    """Flow A's latency in bare round trips: p50 over the bare p50, p99 over the bare p50 (the
    round trip as the unit, the stricter reading) and p99 over the bare p99."""
    unit, tail = bare["p50 ms"] or float("nan"), bare["p99 ms"] or float("nan")
    return {
        "p50_ratio": round(flow["p50 ms"] / unit, 2),
        "p99_ratio": round(flow["p99 ms"] / unit, 2),
        "p99_over_bare_p99": round(flow["p99 ms"] / tail, 2),
    }


INTENT_CREATED_AT = "SELECT created_at FROM vaults_executionintent WHERE feed_id = %s"

SEGMENTS = (
    # (what happens in it, the mark it ends at). Marks: StepRun.started_at / finished_at
    # (finished_at is taken before the journal row is written) and the intent's created_at.
    ("accept: check, store, start run, commit, enqueue", "accepted"),
    ("queue: broker, worker pickup, run row lock", "verify.started"),
    ("verify step", "verify.finished"),
    ("verify journaled+commit, run locked again", "positions.started"),
    ("positions: lease commit, RPC read, run lock", "positions.finished"),
    ("positions journaled+commit, allocate", "allocate.finished"),
    ("allocate journaled, check", "check.finished"),
    ("check journaled, decide to intent stored", "intent"),
)


def _breakdown(accepted: list[tuple[Any, float, float]]) -> list[dict[str, Any]]:
    """Per segment of a feed's path, p50 and p99 over the feeds, from the journal (StepRun's
    started_at and finished_at) and the intent's created_at: read after the run, untimed."""
    feed_ids = [feed_id for feed_id, _, _ in accepted]
    intents = dict(ExecutionIntent.objects.filter(feed_id__in=feed_ids).values_list("feed_id", "created_at"))
    runs = dict(WorkflowRun.objects.filter(input__feed__in=[str(f) for f in feed_ids]).values_list("input__feed", "id"))
    marks_by_run: dict[Any, dict[str, float]] = {}
    for run_id, name, started_at, finished_at in StepRun.objects.filter(
        run_id__in=runs.values(), kind="forward", status="done"
    ).values_list("run_id", "name", "started_at", "finished_at"):
        marks = marks_by_run.setdefault(run_id, {})
        marks[f"{name}.started"] = started_at.timestamp()
        if finished_at is not None:  # always, for a step done
            marks[f"{name}.finished"] = finished_at.timestamp()
    durations: dict[str, list[float]] = {label: [] for label, _ in SEGMENTS}
    for feed_id, arrived, returned in accepted:
        marks = {"arrived": arrived, "accepted": returned, **marks_by_run.get(runs.get(str(feed_id)), {})}
        if feed_id in intents:
            marks["intent"] = intents[feed_id].timestamp()
        previous = "arrived"
        for label, mark in SEGMENTS:
            if mark in marks and previous in marks:
                durations[label].append((marks[mark] - marks[previous]) * 1000)
            previous = mark
    return [
        {
            "segment": label,
            "n": len(values),
            "p50 ms": common.percentile(values, 50),
            "p99 ms": common.percentile(values, 99),
            "mean ms": sum(values) / len(values) if values else float("nan"),
        }
        for label, values in durations.items()
    ]


def _latency_row(path: str, values: list[float]) -> dict[str, Any]:
    return {
        "path": path,
        "n": len(values),
        "p50 ms": common.percentile(values, 50) if values else 0.0,
        "p99 ms": common.percentile(values, 99) if values else 0.0,
        "max ms": max(values, default=0.0),
    }


def run(
    *,
    feeds: int,
    vault_count: int,
    concurrency: int,
    rate: float,
    out: Callable[[str], Any],
    module_vault_count: int = 0,
) -> None:
    """Back to back by default (rate 0): the next feed arrives as soon as the last one's intent
    is stored, so the machine is saturated (relays of earlier intents run meanwhile) and the
    latency includes waiting for the CPU. With a rate, feeds arrive on a fixed schedule (one
    every 1/rate seconds, or at once when behind): the latency at that load."""
    common.require_real_services()
    logging.getLogger("vaults.feeds").setLevel(logging.WARNING)  # a line per accepted feed: noise here
    port = common.free_port()
    node = processes.anvil(port=port, log_path=Path(settings.VAR_DIR) / "log" / f"bench-anvil-{port}.log")
    node.start().wait_ready(timeout=30)
    url = f"http://127.0.0.1:{port}"
    chain, _ = Chain.objects.update_or_create(
        chain_id=31337, defaults={"name": "bench-anvil", "rpc_url": url, "confirmations": 1, "poll_interval": 0.2}
    )
    out(
        f"bench flow-a: {feeds} feeds over {vault_count} account vaults and {module_vault_count} Safe vaults "
        f"with the policy module, in turn, on anvil at {url}"
    )
    out(f"workers: one on 'workflows' and one on 'relay,triggers', prefork concurrency={concurrency} each")
    out(f"arrivals: {f'{rate:g} feeds/s' if rate > 0 else 'back to back (each feed once the last intent is stored)'}")
    latencies: list[float] = []
    through_module: list[float] = []
    accepted: list[tuple[Any, float, float]] = []  # (feed id, arrival, feed_accept returned)
    try:
        # Untimed, and before any worker sends: its snapshot reverts would undo what they send.
        gas_rows, gas_figures = module_gas.run(Web3(Web3.HTTPProvider(url)), out)
        vaults = _vaults(chain, vault_count, out)
        with_module = module_vaults(
            chain, count=module_vault_count, run=uuid.uuid4().hex[:6], protocols=list(PROTOCOLS), out=out
        )
        fed = vaults + with_module
        module_pks = {vault.pk for vault, _ in with_module}
        # Two pools, as README's deployment has them: rebalances never queue behind relays.
        with (
            common.worker(name="flow-a", concurrency=concurrency, queues="workflows"),
            common.worker(name="flow-a-relay", concurrency=concurrency, queues="relay,triggers"),
        ):
            idle = _bare_round_trips(200)  # before any feed: the machine otherwise idle
            bare: list[float] = []  # one after each feed, under the load the feeds leave
            paced_from = time.monotonic()
            for i in range(feeds):
                if rate > 0:
                    time.sleep(max(0.0, paced_from + i / rate - time.monotonic()))
                vault, oracle = fed[i % len(fed)]
                # As in production, a vault's next feed meets a settled vault (untimed wait).
                common.wait_until(
                    partial(_settled, vault.pk),
                    timeout=60,
                    what=f"{vault.vault_id}'s previous intent to settle",
                )
                payload = _feed(oracle, (i // len(fed)) % 2)
                started = time.time()
                feed = feed_accept(payload=payload)
                accepted.append((feed.id, started, time.time()))
                created: list[datetime] = []

                def stored(feed_id: Any = feed.id, created: list[datetime] = created) -> bool:
                    # The poller shares the machine's two cores with what it measures: one
                    # plain SELECT per poll, not an ORM query built each time.
                    with connection.cursor() as cursor:
                        cursor.execute(INTENT_CREATED_AT, [feed_id])
                        created.extend(row[0] for row in cursor.fetchall())
                    return bool(created)

                common.wait_until(stored, timeout=30, what=f"the intent for feed {i}")
                took = (created[0].timestamp() - started) * 1000
                (through_module if vault.pk in module_pks else latencies).append(took)
                # Back to back with the feed, in the same conditions: the run's relay step and
                # the earlier intents' relays are still running, as they were for the feed.
                bare.extend(_bare_round_trips(1))
                if (i + 1) % 100 == 0:
                    out(f"  {i + 1}/{feeds} feeds: p50 so far {common.percentile(latencies, 50):.1f} ms")
    finally:
        node.stop()
    signed, module_signed, round_trip, idle_trip = (
        _latency_row("feed -> signed intent stored (account vaults)", latencies),
        _latency_row("feed -> signed intent stored (through the module)", through_module),
        _latency_row("bare Celery round trip, one after each feed", bare),
        _latency_row("bare Celery round trip, before the feeds (idle)", idle),
    )
    rows = [signed, module_signed, round_trip, idle_trip]
    ratio = ratios(signed, round_trip)
    out("")
    common.table(rows, out)
    out("")
    out("where the time goes (ms, each segment from the end of the one before):")
    common.table(_breakdown(accepted), out)
    out("")
    out("target: p50 <= 50 ms, p99 <= 150 ms")
    out(
        f"in bare round trips (one after each feed): p50 {ratio['p50_ratio']:.2f}x (target <= 8), "
        f"p99 {ratio['p99_ratio']:.2f}x the bare p50 (target <= 20), {ratio['p99_over_bare_p99']:.2f}x the bare p99"
    )
    out("")
    module_gas.report(gas_rows, out)
    out(
        common.result_line(
            "flow-a",
            {
                "p50_ms": signed["p50 ms"],
                "p99_ms": signed["p99 ms"],
                **ratio,
                "bare_roundtrip_p50_ms": round_trip["p50 ms"],
                "bare_roundtrip_p99_ms": round_trip["p99 ms"],
                "idle_roundtrip_p50_ms": idle_trip["p50 ms"],
                "module_p50_ms": module_signed["p50 ms"],
                "module_p99_ms": module_signed["p99 ms"],
                "feeds": len(latencies) + len(through_module),
                "vaults": vault_count,
                "module_vaults": module_vault_count,
                "rate_per_s": rate if rate > 0 else "back-to-back",
                **gas_figures,
            },
        )
    )
