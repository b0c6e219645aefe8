"""`bench soak --minutes N`: the system as `make run` starts it, used as people would for N
minutes, then what went wrong.

It starts `manage.py up` on the embedded default (soak_stack.py) with a fresh VAR_DIR and free
ports, waits for its summary, and drives it (soak_driver.py): the demo's Flow A and example
executor, a second automation client every 2 s, proposals approved through the API, steady
reads, a burst of 50 clients. With `--kill worker,beat,...` it also SIGKILLs those children in
turn, spread over the run, and checks that `up` restarts each. At the end it waits for what is
still in flight (up to a grace period), reads the system's records (soak_records.py), stops
`up` with SIGINT and reports (soak_report.py): deaths and restarts, 5xx answers, error-level
log lines by kind, late, missed and duplicated firings, relays not confirmed, proposal
decisions, and memory and open-file growth per process from the first minute to the last."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connections

from orchestrator.devtools.benchmarks import common, soak_records
from orchestrator.devtools.benchmarks.soak_chaos import Chaos, Kill
from orchestrator.devtools.benchmarks.soak_driver import Driver
from orchestrator.devtools.benchmarks.soak_report import (
    Death,
    ErrorLine,
    FiringCheck,
    Growth,
    deaths_not_caused,
    error_kinds,
    error_lines,
    firings_check,
    growth,
    growth_rows,
    worst_growth,
)
from orchestrator.devtools.benchmarks.soak_stack import Sampler, Stack, Stopped, Summary, use_database

# A beat that comes back fires a subscription once for its earliest missed due time (README,
# catch-up rule): due times this long after its restart may be missing by design.
BEAT_CATCH_UP = 30.0


@dataclass
class SoakResult:
    minutes: int
    deaths: list[Death]  # not caused by the soak's own kills
    stack_deaths: list[Death]  # every death up reported, ours included
    kills: list[Kill]
    errors: list[ErrorLine]
    firings: FiringCheck
    relays: soak_records.RelayCheck
    decisions: soak_records.DecisionCheck
    post_executions_missing: list[str]
    growths: list[Growth]
    stopped: Stopped
    http_5xx: list[str]
    transport_errors: dict[str, int]
    probe_failures: list[str]
    requests: int
    latencies: dict[str, list[float]]
    phases: dict[tuple[str, str], int]
    funded_by_bench: list[str]
    executor_refused: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def rss_growth_pct(self) -> float:
        return worst_growth(self.growths)

    def result_line(self) -> str:
        return common.result_line(
            "soak",
            {
                "minutes": self.minutes,
                "deaths": len(self.deaths),
                "http_5xx": len(self.http_5xx),
                "error_lines": len(self.errors),
                "missed": self.firings.missed,
                "duplicated": self.firings.duplicated,
                "unconfirmed": self.relays.unconfirmed,
                "rss_growth_pct": self.rss_growth_pct,
            },
        )


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def scan_logs(log_dir: Path) -> list[ErrorLine]:
    found: list[ErrorLine] = []
    for path in sorted(log_dir.glob("*.log")):
        found += error_lines(path.stem, path.read_bytes().decode(errors="replace"))
    return found


def run_soak(
    *,
    stack: Stack,
    minutes: float,
    out: Callable[[str], Any],
    kill: Sequence[str] = (),
    grace: float = 240.0,
    before_stop: Callable[[Stack, Summary], Any] | None = None,
) -> SoakResult:
    """Starts the stack, drives it for `minutes`, waits up to `grace` seconds for what is in
    flight, calls `before_stop` (more checks while it runs), stops it and returns what it
    found. The stack is always stopped."""
    seconds = minutes * 60
    out(f"starting {' '.join(stack.argv)} (VAR_DIR {stack.var_dir}, web port {stack.ports.web}) ...")
    began = time.monotonic()
    summary = stack.start()  # stops what it started if it fails
    out(f"up in {time.monotonic() - began:.0f} s; driving it for {minutes:g} min")
    sampler = Sampler(stack).start()
    alias = use_database(stack.database_url)
    driver: Driver | None = None
    chaos = Chaos(stack, kill, seconds=seconds, out=out)
    try:
        driver = Driver(stack=stack, summary=summary, alias=alias, seconds=seconds, out=out)
        driver.start()
        chaos.start()
        labels = {summary.subscription: "demo executor"}
        assert driver.automation is not None
        labels[driver.automation.subscription] = "soak executor"
        _progress(driver, stack, alias, labels, seconds=seconds, out=out)
        driver.stop()
        chaos.stop()
        checked = _settle(driver, alias, labels, chaos.kills, grace=grace, out=out)
        firings, relays, decisions, post_missing = checked
        phases = soak_records.workflow_phases(alias)
        if before_stop is not None:
            before_stop(stack, summary)
    finally:
        connections[alias].close()
        sampler.stop()
        chaos.stop()
        out("stopping up (SIGINT) ...")
        stopped = stack.stop()
        if driver is not None:
            driver.close()
    deaths = deaths_not_caused(stack.deaths(), [(k.name, k.at) for k in chaos.kills])
    assert driver.automation is not None
    return SoakResult(
        minutes=round(minutes),
        deaths=deaths,
        stack_deaths=stack.deaths(),
        kills=chaos.kills,
        errors=scan_logs(stack.log_dir),
        firings=firings,
        relays=relays,
        decisions=decisions,
        post_executions_missing=post_missing,
        growths=growth(sampler.samples, start=driver.started, end=driver.ended),
        stopped=stopped,
        http_5xx=driver.http.server_errors,
        transport_errors=dict(driver.http.transport_errors),
        probe_failures=driver.http.probe_failures,
        requests=driver.http.total,
        latencies=driver.http.latencies,
        phases=dict(phases),
        funded_by_bench=driver.automation.funded_by_bench,
        executor_refused=driver.automation.server.executor.refused,
    )


def _progress(
    driver: Driver, stack: Stack, alias: str, labels: dict[str, str], *, seconds: float, out: Callable[[str], Any]
) -> None:
    minute = 0
    while driver.running:
        time.sleep(min(1.0, max(0.0, driver.started + seconds - time.time())))
        elapsed = time.time() - driver.started
        if elapsed < (minute + 1) * 60 and driver.running:
            continue
        minute += 1
        relays = soak_records.relays(alias, until=_utc(time.time()))
        firings = firings_check(
            soak_records.cadences(alias, labels),
            soak_records.firing_rows(alias),
            start=_utc(driver.started),
            end=_utc(time.time() - 15),
        )
        connections[alias].close()
        out(
            f"  {elapsed / 60:4.1f} min: {driver.http.total} requests, 5xx {len(driver.http.server_errors)}, "
            f"transport errors {sum(driver.http.transport_errors.values())}; firings {firings.delivered}/"
            f"{firings.due} (late {firings.late}); relays {relays.confirmed}/{relays.requested} confirmed; "
            f"proposals executed {sum(1 for p in driver.proposals.traces if p.outcome == 'executed')}; "
            f"deaths {len(stack.deaths())}; error lines {len(scan_logs(stack.log_dir))}"
        )


def _settle(
    driver: Driver, alias: str, labels: dict[str, str], kills: list[Kill], *, grace: float, out: Callable[[str], Any]
) -> tuple[FiringCheck, soak_records.RelayCheck, soak_records.DecisionCheck, list[str]]:
    """Waits until everything due in the run was delivered, confirmed and decided, or `grace`
    seconds; returns the checks as they then stand."""
    start, end = _utc(driver.started), _utc(driver.ended)
    beat_down = [(_utc(k.at), _utc((k.restarted_at or k.at + 120) + BEAT_CATCH_UP)) for k in kills if k.name == "beat"]
    deadline = time.monotonic() + grace
    waited = time.monotonic()
    while True:
        received_twice = driver.automation.server.executor.received_twice() if driver.automation else 0
        firings = firings_check(
            soak_records.cadences(alias, labels),
            soak_records.firing_rows(alias),
            start=start,
            end=end,
            excused=beat_down,
            received_twice=received_twice,
        )
        relays = soak_records.relays(alias, until=_utc(driver.ended + 10))
        decisions = soak_records.decisions(alias, driver.proposals.traces)
        post_missing = soak_records.post_executions_missing(alias, until=end)
        settled = not firings.missed and not relays.unconfirmed and not decisions.lost and not post_missing
        if settled or time.monotonic() > deadline:
            out(f"settled in {time.monotonic() - waited:.0f} s" if settled else f"grace of {grace:.0f} s over")
            return firings, relays, decisions, post_missing
        time.sleep(5)


# --- the report ----------------------------------------------------------------------------------


def report(result: SoakResult, out: Callable[[str], Any]) -> None:
    f, d = result.firings, result.decisions
    late = f.lateness_ms
    rows: list[dict[str, Any]] = [
        {"what": "process deaths (not ours)", "value": len(result.deaths)},
        {
            "what": "kill -9 by the soak / back",
            "value": f"{len(result.kills)} / {sum(1 for k in result.kills if k.restarted_at)}",
        },
        {"what": "requests", "value": result.requests},
        {"what": "HTTP 5xx", "value": len(result.http_5xx)},
        {"what": "transport errors", "value": sum(result.transport_errors.values())},
        {"what": "/readyz not ready", "value": len(result.probe_failures)},
        {"what": "error-level log lines", "value": len(result.errors)},
        {"what": "firings due / delivered", "value": f"{f.due} / {f.delivered}"},
        {
            "what": "firings missed (not fired / never answered)",
            "value": f"{f.missed} ({f.not_fired} / {f.undelivered})",
        },
        {"what": "firings skipped by the catch-up rule (beat down, dispatcher late)", "value": f.excused},
        {
            "what": "firings duplicated (fired twice / hook twice)",
            "value": f"{f.duplicated} ({f.duplicated_rows} / {f.received_twice})",
        },
        {"what": "firings late > 2 s", "value": f.late},
        {
            "what": "firing lateness p50 / p99 ms",
            "value": f"{common.percentile(late, 50):.0f} / {common.percentile(late, 99):.0f}",
        },
        {"what": "answers refused / relays failed", "value": f"{f.refused} / {f.failed}"},
        {"what": "post-execution calls missing", "value": len(result.post_executions_missing)},
        {"what": "relays requested / confirmed", "value": f"{result.relays.requested} / {result.relays.confirmed}"},
        {"what": "approvals posted / recorded", "value": f"{d.posted} / {d.recorded}"},
        {"what": "proposals approved / executed / refused", "value": f"{d.approved} / {d.executed} / {len(d.refused)}"},
        {"what": "decisions lost", "value": len(d.lost)},
        {"what": "clean stop (exit, leftovers, ports)", "value": _stop_text(result.stopped)},
    ]
    out("")
    common.table(rows, out)
    latency = [
        {"requests": group, "n": len(v), "p50 ms": statistics.median(v), "p99 ms": common.percentile(v, 99)}
        for group, v in sorted(result.latencies.items())
        if v
    ]
    if latency:
        out("")
        common.table(latency, out)
    if result.growths:
        out("")
        common.table(growth_rows(result.growths), out)
    kinds = error_kinds(result.errors)
    if kinds:
        out("")
        common.table([{"log": s, "n": n, "kind": k} for s, k, n, _ in kinds[:30]], out)
        out("examples:")
        for source, _, _, line in kinds[:10]:
            out(f"  {source}: {line[:300]}")
    runs = [{"workflow": kind, "phase": phase, "runs": n} for (kind, phase), n in sorted(result.phases.items())]
    if runs:
        out("")
        common.table(runs, out)
    for title, items in (
        ("deaths", [d.line for d in result.deaths]),
        ("5xx", result.http_5xx),
        ("transport errors", [f"{n} x {k}" for k, n in result.transport_errors.items()]),
        ("missed firings", f.examples),
        ("relays not confirmed", result.relays.open),
        ("post-execution calls missing", result.post_executions_missing),
        ("proposal decisions lost", d.lost),
        ("proposals refused at execution", d.refused),
        ("refused by the soak's executor", result.executor_refused),
        ("relayer keys the bench had to fund (not funded on creation)", result.funded_by_bench),
        ("left running after the stop", result.stopped.left_running),
        ("notes", result.notes),
    ):
        if items:
            out(f"{title}:")
            for item in items[:15]:
                out(f"  {item}")
    out("")
    out(result.result_line())


def _stop_text(stopped: Stopped) -> str:
    state = "clean" if stopped.clean else "NOT clean"
    return (
        f"{state}: exit {stopped.returncode} in {stopped.seconds:.0f} s, {len(stopped.left_running)} left, "
        f"ports open {stopped.listening or 'none'}"
    )


def run(*, minutes: int, external: bool, kill: Sequence[str], out: Callable[[str], Any]) -> SoakResult:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        var_dir = Path(tmp) / "var"
        stack = Stack(var_dir=var_dir, external=external)
        try:
            result = run_soak(stack=stack, minutes=minutes, out=out, kill=kill)
        finally:
            keep = Path(tempfile.gettempdir()) / f"soak-logs-{time.strftime('%Y%m%d-%H%M%S')}"
            if (var_dir / "log").exists():
                shutil.copytree(var_dir / "log", keep)
            keep.mkdir(exist_ok=True)
            (keep / "up.out").write_text(stack.text)
            out(f"logs kept in {keep}")
        report(result, out)
    return result
