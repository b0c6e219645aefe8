"""`bench recovery`: relays keep coming while a worker process is SIGKILLed mid-batch every
2-4 s, at each relay step in turn; how long until a killed step runs again, and what the
faults cost a request from its request to its confirmation.

Kills are failpoints (orchestrator/infra/failpoints.py): each worker starts with all of them
named and disarmed (their marker files exist); the bench arms one by removing its file, and the
first pool process to reach that point writes its pid there and SIGKILLs itself, as the OOM
killer would. Its worker forks a new pool process; nothing else restarts anything. Beat runs
as in production (the sweep every WORKFLOW_SWEEP_SECONDS, the relayer monitor), with the
production stall rule and relay leases unless the environment says otherwise. The workers
reach the node through a proxy that, once during the fault run, holds every RPC call for
`--rpc-stall` seconds (stall_proxy.py), as a node that hangs and comes back.

A kill in a leased step (simulate, broadcast, confirm) or in sign (atomic, but recorded in the
transaction of simulate's record, so simulate's lease stands) leaves a lease whose holder is
dead; "again" is the next journal row of that run, a claim by another process."""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from web3 import Web3
from web3.types import Wei

from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.stall_proxy import StallProxy
from orchestrator.engine.models import StepRun, WorkflowRun
from orchestrator.operations.schedules import ensure_periodic_tasks
from relayer.keys import key_manager
from relayer.models import Chain, RelayTransaction, SigningKey, TxPhase
from relayer.services.requests import relay_request

SINK = "0x000000000000000000000000000000000000bEEF"
POINTS = ("relay.simulate", "relay.sign_before_commit", "relay.before_broadcast", "relay.after_receipt")


@dataclass
class Kill:
    point: str
    pid: int
    at: float  # epoch seconds, when the process marked the point (just before its SIGKILL)
    correlation_id: str = ""  # of the run it was executing
    run_id: uuid.UUID | None = None  # the run whose live lease it held
    again_at: float | None = None  # the run's next journal row after the kill

    @property
    def recovery(self) -> float | None:
        return None if self.again_at is None else self.again_at - self.at


class Chaos:
    """Arms the failpoints in turn, one every `every` seconds (uniform), until stopped."""

    def __init__(self, folder: Path, every: tuple[float, float], out: Callable[[str], Any]) -> None:
        self.folder = folder
        self.every = every
        self.out = out
        self.kills: list[Kill] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="recovery-chaos", daemon=True)

    def _run(self) -> None:
        try:
            turn = 0
            while not self.stop.wait(random.uniform(*self.every)):
                kill = self._fire(POINTS[turn % len(POINTS)])
                turn += 1
                if kill is not None:
                    self.kills.append(kill)
        finally:
            connection.close()

    def _fire(self, point: str) -> Kill | None:
        marker = self.folder / point
        marker.unlink()
        deadline = time.monotonic() + 20
        while not self.stop.is_set() and time.monotonic() < deadline:
            if marker.exists() and marker.stat().st_size:
                pid, _, correlation_id = marker.read_text().partition(" ")
                kill = Kill(point, int(pid), marker.stat().st_mtime, correlation_id=correlation_id)
                # The dead process's live lease: the sweep leaves lease_owner until a new claim.
                held = WorkflowRun.objects.filter(
                    lease_owner__endswith=f":{pid}", lease_until__gte=datetime.fromtimestamp(kill.at, tz=UTC)
                ).first()
                kill.run_id = held.pk if held else None
                return kill
            time.sleep(0.01)
        marker.touch()  # not reached in time (no traffic there): disarmed again
        return None


def _chain(url: str, w3: Web3) -> Chain:
    chain, _ = Chain.objects.update_or_create(
        chain_id=w3.eth.chain_id,
        defaults={"name": "bench-anvil", "rpc_url": url, "confirmations": 1, "poll_interval": 0.1, "stuck_after": 30},
    )
    return chain


def _signers(w3: Web3, n: int) -> list[SigningKey]:
    keys = [key_manager().create_key(purpose="relayer", label="bench recovery") for _ in range(n)]
    funder = w3.eth.accounts[0]
    for h in [w3.eth.send_transaction({"from": funder, "to": k.address, "value": Wei(10**20)}) for k in keys]:
        w3.eth.wait_for_transaction_receipt(h, timeout=30)
    return keys


def _request(chain: Chain, signers: list[SigningKey], count: int, seconds: float) -> list[uuid.UUID]:
    """`count` relays, evenly over `seconds`, round-robin over the signers."""
    ids = []
    began = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, began + i * seconds / count - time.monotonic()))
        tx = relay_request(
            signer=signers[i % len(signers)],
            chain=chain,
            to=SINK,
            value=1,
            idempotency_key=f"bench-recovery-{uuid.uuid4().hex}",
            requested_by=("bench", str(i)),
        )
        ids.append(tx.id)
    return ids


def _settle(ids: list[uuid.UUID], timeout: float) -> None:
    final = (TxPhase.COMPLETED, TxPhase.FAILED, TxPhase.DEAD_LETTER)

    def done() -> bool:
        return RelayTransaction.objects.filter(pk__in=ids, phase__in=final).count() == len(ids)

    common.wait_until(done, timeout=timeout, what="every relay to finish")


def _again(kill: Kill) -> None:
    """The killed run's next journal row. With no lease (a kill in an atomic step), the run is
    the one executing under the correlation id the process had when it died."""
    if kill.run_id is None and kill.correlation_id in ("", "-"):
        return
    after = datetime.fromtimestamp(kill.at, tz=UTC)
    rows = StepRun.objects.filter(started_at__gt=after)
    if kill.run_id is not None:
        rows = rows.filter(run_id=kill.run_id)
    else:
        rows = rows.filter(run__correlation_id=kill.correlation_id)
    first = rows.order_by("started_at").values_list("started_at", "run_id").first()
    if first is not None:
        kill.again_at, kill.run_id = first[0].timestamp(), kill.run_id or first[1]


def _nonces(w3: Web3, signers: list[SigningKey]) -> int:
    return sum(w3.eth.get_transaction_count(Web3.to_checksum_address(k.address)) for k in signers)


def run(
    *,
    count: int,
    seconds: float,
    workers: int,
    concurrency: int,
    every: tuple[float, float],
    out: Callable[[str], Any],
    rpc_stall: tuple[float, float] = (20.0, 15.0),
) -> None:
    """`rpc_stall`: (seconds into the fault run, seconds) the node's RPC hangs; 0 s for none."""
    common.require_real_services()
    port = common.free_port()
    log_dir = Path(settings.VAR_DIR) / "log"
    node = processes.anvil(port=port, log_path=log_dir / f"bench-anvil-{port}.log")
    node.start().wait_ready(timeout=30)
    url = f"http://127.0.0.1:{port}"
    w3 = Web3(Web3.HTTPProvider(url))  # the bench's own reads go to the node directly
    proxy = StallProxy(url).__enter__()
    chain = _chain(proxy.url, w3)
    stall_at, stall_for = rpc_stall
    signers = _signers(w3, 4)
    folder = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    for point in POINTS:
        (folder / point).touch()  # named but disarmed
    env = {"FAILPOINTS": ",".join(POINTS), "FAILPOINTS_DIR": str(folder)}
    ensure_periodic_tasks()
    out(f"bench recovery: {count} relays over {seconds:.0f} s on anvil at {url}, 4 signers")
    out(
        f"{workers} workers x {concurrency} processes; a pool process SIGKILLed every {every[0]:g}-{every[1]:g} s "
        f"at {', '.join(POINTS)} in turn"
    )
    out(
        f"sweep every {settings.WORKFLOW_SWEEP_SECONDS:g} s, stall rule {settings.WORKFLOW_STALL_SECONDS:g} s, "
        f"relay step lease {settings.RELAYER_STEP_LEASE_SECONDS:g} s"
    )
    if stall_for > 0:
        out(f"the node's RPC hangs for {stall_for:g} s at {stall_at:g} s into the fault run (the workers' proxy)")
    stall = threading.Timer(stall_at, proxy.stall, args=(stall_for,)) if stall_for > 0 else None
    chaos = Chaos(folder, every, out)
    try:
        with ExitStack() as stack:
            for i in range(workers):
                stack.enter_context(common.worker(name=f"recovery-{i}", concurrency=concurrency, env=env))
            beat = processes.celery_beat(log_path=log_dir / f"bench-recovery-beat-{os.getpid()}.log")
            beat.start().wait_ready(timeout=60)
            stack.callback(beat.stop)
            _settle(_request(chain, signers, 8, 1.0), timeout=120)  # warm up
            before = _nonces(w3, signers)
            chaos.thread.start()
            if stall is not None:
                stall.start()
            started = time.monotonic()
            ids = _request(chain, signers, count, seconds)
            chaos.stop.set()
            chaos.thread.join(timeout=30)
            _settle(ids, timeout=900)
            elapsed = time.monotonic() - started
            sent = _nonces(w3, signers) - before
    finally:
        if stall is not None:
            stall.cancel()
        proxy.__exit__()
        node.stop()
    for kill in chaos.kills:
        _again(kill)
        where = f"run {kill.run_id}" if kill.run_id else "no run found"
        took = f"{kill.recovery:.2f} s" if kill.recovery is not None else "-"
        out(f"  kill pid {kill.pid} at {kill.point:<26} {where}: step again after {took}")
    recoveries = [k.recovery for k in chaos.kills if k.recovery is not None]
    rows = RelayTransaction.objects.filter(pk__in=ids)
    confirmed = [(r.confirmed_at - r.created_at).total_seconds() for r in rows if r.confirmed_at is not None]
    failed = rows.exclude(phase=TxPhase.COMPLETED).count()
    out("")
    out(
        f"kills: {len(chaos.kills)} ({len(recoveries)} in a run, measured); kill -> step again: "
        f"p50 {common.percentile(recoveries, 50):.2f} s, p99 {common.percentile(recoveries, 99):.2f} s, "
        f"max {max(recoveries, default=float('nan')):.2f} s"
    )
    out(
        f"relays: {len(confirmed)}/{count} confirmed, {failed} not, in {elapsed:.1f} s; request -> confirmation "
        f"p50 {common.percentile(confirmed, 50):.2f} s, p99 {common.percentile(confirmed, 99):.2f} s, "
        f"max {max(confirmed, default=float('nan')):.2f} s"
    )
    out(f"transactions on chain: {sent} for {count} relays (nonces used by the signers)")
    if stall_for > 0:
        out(f"RPC stall: {stall_for:g} s at {stall_at:g} s; {proxy.held} calls held by it")
    out("target: kill -> step again p99 <= 15 s; every relay confirmed once")
    out(
        common.result_line(
            "recovery",
            {
                "kills": len(chaos.kills),
                "measured": len(recoveries),
                "again_p50_s": common.percentile(recoveries, 50),
                "again_p99_s": common.percentile(recoveries, 99),
                "again_max_s": max(recoveries, default=float("nan")),
                "relays": count,
                "confirmed": len(confirmed),
                "on_chain": sent,
                "confirm_p50_s": common.percentile(confirmed, 50),
                "confirm_p99_s": common.percentile(confirmed, 99),
                "rpc_stall_s": stall_for,
                "rpc_calls_held": proxy.held,
            },
        )
    )
