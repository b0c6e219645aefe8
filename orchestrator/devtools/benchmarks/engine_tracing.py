"""`bench engine`'s tracing overhead: the same no-op workflow on a worker with tracing off and on.

On, the worker exports every span (its tasks' and its steps') over OTLP/HTTP to a receiver this
process runs on 127.0.0.1 (orchestrator/devtools/otlp_receiver.py), which decodes every
request as a collector would. Off, the worker has no traces endpoint, so tracing is not set up.
The two alternate in rounds, the order swapped each round, so a drift of the machine (another
process, a warming cache) falls on both alike."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.engine import STEPS, Engine, Measure, measure
from orchestrator.devtools.otlp_receiver import OtlpReceiver
from orchestrator.infra import tracing


def _env(receiver: OtlpReceiver, traced: bool) -> dict[str, str]:
    # Only the traces' own endpoint differs between the modes, so nothing else that reads the
    # OTEL_* variables (the metrics) changes with them; the shell's general endpoint is dropped.
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.endpoint}/v1/traces" if traced else "",
    }


def _span_cost_us(receiver: OtlpReceiver, *, batches: int = 10, per_batch: int = 1000) -> tuple[float, float]:
    """What a step's span costs where it is made, without the noise of a whole run: the mean CPU
    time of `tracing.span` with a step's attributes, off (no provider, the default here) and on
    (this process's provider, exporting to the receiver). Each batch fits the batch processor's
    queue and is flushed untimed, so no span is dropped. Last, since it turns tracing on here."""
    attributes = tracing.step_attributes(
        kind="engine.noop", run_id=uuid.uuid4(), step="s", attempt=1, compensating=False
    )

    def timed() -> float:
        total = 0.0
        for _ in range(batches):
            started = time.thread_time()
            for _ in range(per_batch):
                with tracing.span("engine.noop/s", attributes=attributes):
                    pass
            total += time.thread_time() - started
            if tracing.tracing_on():
                tracing.tracing_flush()
        return total / (batches * per_batch) * 1e6

    off = timed()
    os.environ.update(_env(receiver, True))
    tracing.tracing_setup(role="bench")
    try:
        return off, timed()
    finally:
        tracing.tracing_shutdown()


def run(*, rounds: int, sequential: int, burst: int, concurrency: int, out: Callable[[str], Any]) -> dict[str, float]:
    """Prints the table; returns the RESULT line's tracing figures."""
    out("")
    out(f"tracing overhead: {rounds} rounds of off/on (order swapped each round), {sequential} sequential runs")
    out(f"and a burst of {burst} per mode and round, each on a fresh worker (prefork concurrency={concurrency})")
    receiver = OtlpReceiver().start()
    latencies: dict[bool, list[float]] = {False: [], True: []}
    bursts: dict[bool, list[Measure]] = {False: [], True: []}
    exported: dict[bool, int] = {False: 0, True: 0}  # spans received while each mode's worker ran
    try:
        for n in range(rounds):
            for traced in (False, True) if n % 2 == 0 else (True, False):
                label = "on" if traced else "off"
                before = len(receiver.snapshot())
                with common.worker(name=f"tracing-{label}", concurrency=concurrency, env=_env(receiver, traced)):
                    measure(Engine(), sequential=5, burst=10, progress=lambda _: None)  # warm up
                    taken = measure(Engine(), sequential=sequential, burst=burst, progress=lambda _: None)
                # The worker has stopped: its pool children flushed their spans on the way out.
                exported[traced] += len(receiver.snapshot()) - before
                latencies[traced].extend(taken.latencies_ms)
                bursts[traced].append(taken)
                out(
                    f"  round {n + 1}, tracing {label}: p50 {common.percentile(taken.latencies_ms, 50):.2f} ms, "
                    f"{taken.steps_per_s:.0f} steps/s"
                )
        span_cost = _span_cost_us(receiver)
    finally:
        receiver.stop()
    rows: list[dict[str, Any]] = []
    figures: dict[str, float] = {}
    for traced in (False, True):
        label = "on" if traced else "off"
        runs = sum(m.burst for m in bursts[traced])
        seconds = sum(m.burst_seconds for m in bursts[traced])
        p50, p99 = common.percentile(latencies[traced], 50), common.percentile(latencies[traced], 99)
        rows.append(
            {
                "tracing": label,
                "runs timed": len(latencies[traced]),
                "p50 ms": p50,
                "p99 ms": p99,
                "burst runs": runs,
                "steps/s": runs * STEPS / seconds,
                "spans received": exported[traced],
            }
        )
        figures |= {f"tracing_{label}_p50_ms": p50, f"tracing_{label}_p99_ms": p99}
        figures[f"tracing_{label}_steps_per_s"] = runs * STEPS / seconds
    out("")
    common.table(rows, out)
    overhead = figures["tracing_on_p50_ms"] / figures["tracing_off_p50_ms"] - 1
    throughput = figures["tracing_on_steps_per_s"] / figures["tracing_off_steps_per_s"]
    out(f"tracing overhead: p50 latency {overhead:+.1%}, throughput on/off {throughput:.2f}")
    off_us, on_us = span_cost
    out(f"one step's span in this process: {off_us:.2f} µs with tracing off, {on_us:.2f} µs on (CPU of its thread)")
    figures |= {"tracing_span_off_us": off_us, "tracing_span_on_us": on_us}
    figures |= {"tracing_overhead": overhead, "tracing_throughput_ratio": throughput, "tracing_spans": exported[True]}
    return figures
