"""`bench engine`: the 5-step no-op workflow against a bare Celery chain of 5 no-op tasks.

Both run on one worker started here with the same settings, in the same run. Two measures:
- latency: one at a time, end-to-end time from start to the last step's completion;
- throughput: a burst of runs started at once, total steps per second until all are done.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import chain
from django.conf import settings

from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.tasks import DONE_KEY, bench_done, bench_noop
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_start
from orchestrator.engine.workflows import NOOP

STEPS = len(NOOP.steps)


@dataclass
class Measure:
    name: str
    latencies_ms: list[float]
    burst: int
    burst_seconds: float

    @property
    def steps_per_s(self) -> float:
        return self.burst * STEPS / self.burst_seconds

    def row(self) -> dict[str, Any]:
        return {
            "system": self.name,
            "runs timed": len(self.latencies_ms),
            "p50 ms": common.percentile(self.latencies_ms, 50),
            "p99 ms": common.percentile(self.latencies_ms, 99),
            "burst": self.burst,
            "burst s": self.burst_seconds,
            "steps/s": self.steps_per_s,
        }


class Bare:
    name = "bare celery chain"

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(settings.CELERY_BROKER_URL, decode_responses=True)
        self.redis.delete(DONE_KEY)
        self.seen: dict[str, float] = {}

    def start(self) -> str:
        key = uuid.uuid4().hex
        links = [bench_noop.si(key).set(queue="workflows") for _ in range(STEPS - 1)]
        chain(*links, bench_done.si(key).set(queue="workflows")).apply_async()
        return key

    def finished(self, keys: set[str]) -> dict[str, float]:
        while (item := self.redis.lpop(DONE_KEY)) is not None:
            key, at = str(item).split()
            self.seen[key] = float(at)
        return {k: self.seen[k] for k in keys if k in self.seen}


class Engine:
    name = "engine workflow"

    def start(self) -> str:
        # Started from this process, as a web request or beat would start one.
        run, _ = workflow_start(kind=NOOP.kind)
        return str(run.id)

    def finished(self, keys: set[str]) -> dict[str, float]:
        rows = WorkflowRun.objects.filter(pk__in=keys, phase=Phase.COMPLETED).values_list("id", "finished_at")
        return {str(pk): at.timestamp() for pk, at in rows if at is not None}


def _finish_time(system: Bare | Engine, key: str) -> float:
    done: dict[str, float] = {}

    def complete() -> bool:
        done.update(system.finished({key}))
        return key in done

    common.wait_until(complete, timeout=30, what=f"{system.name} run {key}")
    return done[key]


def measure(system: Bare | Engine, *, sequential: int, burst: int, progress: Callable[[str], Any]) -> Measure:
    latencies: list[float] = []
    for _ in range(sequential):
        started = time.time()
        latencies.append((_finish_time(system, system.start()) - started) * 1000)
    progress(f"  {system.name}: {sequential} sequential runs timed")

    started = time.time()
    keys = {system.start() for _ in range(burst)}
    finished: dict[str, float] = {}

    def all_done() -> bool:
        finished.update(system.finished(keys - set(finished)))
        return len(finished) == len(keys)

    common.wait_until(all_done, timeout=600, what=f"{system.name} burst")
    elapsed = max(finished.values()) - started
    progress(f"  {system.name}: burst of {burst} done in {elapsed:.2f}s")
    return Measure(system.name, latencies, burst, elapsed)


def run(*, sequential: int, burst: int, concurrency: int, out: Callable[[str], Any], tracing_rounds: int = 3) -> None:
    common.require_real_services()
    out(f"bench engine: {STEPS}-step no-op workflow vs a bare chain of {STEPS} no-op tasks")
    out(f"one worker, prefork concurrency={concurrency}; {sequential} sequential runs, bursts of {burst}")
    with common.worker(name="engine", concurrency=concurrency):
        # Warm both paths (imports, connections) before timing anything.
        measure(Bare(), sequential=5, burst=10, progress=lambda _: None)
        measure(Engine(), sequential=5, burst=10, progress=lambda _: None)
        bare = measure(Bare(), sequential=sequential, burst=burst, progress=out)
        engine = measure(Engine(), sequential=sequential, burst=burst, progress=out)
    # For reference: the same engine with every step sent through the broker.
    with common.worker(name="engine-hop", concurrency=concurrency, env={"WORKFLOW_INLINE_STEPS": "0"}):
        measure(Engine(), sequential=5, burst=10, progress=lambda _: None)
        hop = measure(Engine(), sequential=sequential, burst=burst, progress=out)
        hop.name = "engine, broker hop per step"
    out("")
    common.table([bare.row(), engine.row(), hop.row()], out)
    traced: dict[str, float] = {}
    if tracing_rounds:
        from orchestrator.devtools.benchmarks import engine_tracing  # it imports this module

        per_round = max(1, sequential // 4), max(1, burst // 4)
        traced = engine_tracing.run(
            rounds=tracing_rounds, sequential=per_round[0], burst=per_round[1], concurrency=concurrency, out=out
        )
    ratio = engine.steps_per_s / bare.steps_per_s
    engine_p50 = common.percentile(engine.latencies_ms, 50)
    bare_p50 = common.percentile(bare.latencies_ms, 50)
    overhead = (engine_p50 - bare_p50) / STEPS
    out("")
    out(f"throughput ratio engine/bare: {ratio:.2f} (target >= 0.70)")
    out(f"p50 overhead per step: {overhead:.2f} ms (target <= 2.00)")
    out(
        common.result_line(
            "engine",
            {
                "throughput_ratio": ratio,
                "p50_overhead_ms_per_step": overhead,
                "engine_steps_per_s": engine.steps_per_s,
                "bare_steps_per_s": bare.steps_per_s,
                "engine_p50_ms": engine_p50,
                "engine_p99_ms": common.percentile(engine.latencies_ms, 99),
                "bare_p50_ms": bare_p50,
                "bare_p99_ms": common.percentile(bare.latencies_ms, 99),
                "hop_per_step_throughput_ratio": hop.steps_per_s / bare.steps_per_s,
                **traced,
            },
        )
    )
