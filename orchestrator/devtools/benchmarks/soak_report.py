"""`bench soak`'s arithmetic, kept free of processes and databases so it can be unit-tested:
error-level log lines grouped by kind, deaths read from `up`'s output, INTERVAL firings checked
against their cadence, memory and open-file growth, and the final table and RESULT line."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

ERROR_LEVELS = frozenset({"ERROR", "CRITICAL", "FATAL", "PANIC"})
LATE = timedelta(seconds=2)

# --- error-level log lines -------------------------------------------------------------------

# Our Django/Celery processes (settings.LOGGING's text format): "<date> <time>,ms LEVEL logger [cid] msg".
_PYTHON = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+ (?P<level>[A-Z]+) (?P<logger>\S+) (?P<msg>.*)$")
# Celery's own worker and beat format: "[<date> <time>,ms: LEVEL/ProcessName] msg".
_CELERY = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+: (?P<level>[A-Z]+)/(?P<logger>[^\]]+)\] (?P<msg>.*)$")
# gunicorn: "[<date> <time> +0000] [pid] [LEVEL] msg".
_GUNICORN = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[(?P<level>[A-Z]+)\] (?P<msg>.*)$")
# PostgreSQL's default prefix "%m [%p] ": "<date> <time>.ms UTC [pid] LEVEL:  msg".
_POSTGRES = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[\d+\] (?P<level>[A-Z]+):\s+(?P<msg>.*)$")
# Anything else (anvil, the example executor's stderr): a bare level word.
_BARE = re.compile(r"\b(?P<level>ERROR|CRITICAL|FATAL|PANIC)\b[:\]]?\s*(?P<msg>.*)$")
_CORRELATION = re.compile(r"^\[[^\]]*\] ")
_EXCEPTION = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Fault)\w*)(?::\s*(?P<msg>.*))?$"
)
_TRACEBACK_GLUE = ("During handling of the above exception", "The above exception was the direct cause")


def normalized(message: str, width: int = 70) -> str:
    """A message with its variable parts (ids, hashes, numbers, quoted values) replaced, so lines
    of one kind group together."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", message, flags=re.I)
    text = re.sub(r"0x[0-9a-fA-F]+", "<hex>", text)
    text = re.sub(r"\b\d+(?:\.\d+)?\b", "<n>", text)
    text = re.sub(r"'[^']{0,200}'|\"[^\"]{0,200}\"", "<s>", text)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class ErrorLine:
    source: str  # the log's name: worker, web, postgres, ...
    kind: str  # "<logger>: <message prefix>", with the exception type when a traceback follows
    line: str  # as written (first line)


@dataclass
class _Parsed:
    level: str
    logger: str
    message: str


def _parse(line: str) -> _Parsed | None:
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "level" in record:
            return _Parsed(str(record["level"]), str(record.get("logger", "-")), str(record.get("message", "")))
    for pattern, logger in ((_POSTGRES, "postgres"), (_PYTHON, None), (_CELERY, "celery"), (_GUNICORN, "gunicorn")):
        match = pattern.match(line)
        if match:
            groups = match.groupdict()
            name = logger or groups.get("logger") or "-"
            if logger == "celery":  # "ForkPoolWorker-3" says nothing about what logged
                name = "celery"
            return _Parsed(groups["level"], name, _CORRELATION.sub("", groups["msg"]))
    return None


def _exception_of(block: list[str]) -> str:
    """The last exception line of a traceback block (the one raised last, after any chain)."""
    found = ""
    for line in block:
        if line and not line[0].isspace() and not line.startswith(("Traceback", *_TRACEBACK_GLUE)):
            match = _EXCEPTION.match(line.strip())
            if match:
                found = match.group("type").rsplit(".", 1)[-1] + (
                    f": {normalized(match.group('msg'), 50)}" if match.group("msg") else ""
                )
    return found or "Traceback"


def error_lines(source: str, text: str) -> list[ErrorLine]:
    """Every error-level line of one log, and every traceback: a traceback right after an error
    line is that line's (its exception type joins the kind), otherwise it counts on its own."""
    found: list[ErrorLine] = []
    lines = text.splitlines()
    last_error: int | None = None  # index in `found` of an error line a traceback may belong to
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Traceback (most recent call last)"):
            block = [line]
            i += 1
            while i < len(lines) and (
                not lines[i]
                or lines[i][0].isspace()
                or lines[i].startswith(("Traceback", *_TRACEBACK_GLUE))
                or (_parse(lines[i]) is None and _EXCEPTION.match(lines[i].strip()) is not None)
            ):
                block.append(lines[i])
                i += 1
            exception = _exception_of(block)
            if last_error is not None:
                previous = found[last_error]
                found[last_error] = ErrorLine(previous.source, f"{previous.kind} [{exception}]", previous.line)
            else:
                found.append(ErrorLine(source, f"traceback: {exception}", block[-1].strip()))
            last_error = None
            continue
        parsed = _parse(line)
        if parsed is None and line and not line[0].isspace():  # indented: quoted, e.g. a log's tail in up's
            bare = _BARE.search(line)
            if bare and source != "postgres":
                parsed = _Parsed(bare.group("level"), "-", bare.group("msg"))
        if parsed is not None:
            if parsed.level in ERROR_LEVELS:
                found.append(ErrorLine(source, f"{parsed.logger} {parsed.level}: {normalized(parsed.message)}", line))
                last_error = len(found) - 1
            elif parsed.level not in {"DETAIL", "STATEMENT", "HINT", "CONTEXT"}:
                last_error = None
        i += 1
    return found


def error_kinds(lines: Iterable[ErrorLine]) -> list[tuple[str, str, int, str]]:
    """(source, kind, count, an example line), most frequent first."""
    counts: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], str] = {}
    for line in lines:
        counts[(line.source, line.kind)] += 1
        example.setdefault((line.source, line.kind), line.line)
    return [(source, kind, n, example[(source, kind)]) for (source, kind), n in counts.most_common()]


# --- deaths, from `up`'s output ----------------------------------------------------------------

_DIED = re.compile(r"^\s*(?P<name>[\w-]+) died\b(?P<rest>.*)$")


@dataclass(frozen=True)
class Death:
    name: str
    line: str
    restarted: bool
    at: float  # when the line was read (time.time())


def deaths_not_caused(found: Sequence[Death], kills: Sequence[tuple[str, float]]) -> list[Death]:
    """The deaths left once each kill (name, time) is matched with the first death of that child
    after it. A restart that then fails ("exited (1)") is a death of its own."""
    left = list(found)
    for name, at in sorted(kills, key=lambda kill: kill[1]):
        match = next((d for d in left if d.name == name and d.at >= at), None)
        if match is not None:
            left.remove(match)
    return left


def deaths(lines: Iterable[tuple[float, str]]) -> list[Death]:
    """`up` prints "<name> died (<how>); restarting it (restart N)" for a child it restarts and
    "<name> died; stopped everything else." for one it cannot do without."""
    found = []
    for at, line in lines:
        match = _DIED.match(line)
        if match:
            found.append(Death(match.group("name"), line.strip(), "restarting" in match.group("rest"), at))
    return found


# --- INTERVAL firings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cadence:
    """One INTERVAL subscription: it is due at first_due + k * interval."""

    subscription: str
    label: str
    interval: int
    first_due: datetime
    cancelled_at: datetime | None = None


@dataclass(frozen=True)
class FiringRow:
    subscription: str
    due_at: datetime
    sent_at: datetime | None  # first time the hook went out
    answered_at: datetime | None  # when the executor's answer was recorded
    status: str  # pending, relayed, skipped, refused, failed
    request_id: str = ""


@dataclass
class FiringCheck:
    due: int = 0
    delivered: int = 0
    not_fired: int = 0  # no firing row for a due time
    undelivered: int = 0  # a row, but the executor's answer never came (hook failed for good)
    excused: int = 0  # beat down or the dispatcher late: the catch-up rule fires once, not per due time
    duplicated_rows: int = 0  # a due time fired twice
    received_twice: int = 0  # a hook the soak's executor received twice (same requestID)
    refused: int = 0  # answered, and the answer refused (signature, policy)
    failed: int = 0  # answered, and what followed failed (the relay)
    late: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def missed(self) -> int:
        return self.not_fired + self.undelivered

    @property
    def duplicated(self) -> int:
        return self.duplicated_rows + self.received_twice


def firings_check(
    cadences: Sequence[Cadence],
    firings: Sequence[FiringRow],
    *,
    start: datetime,
    end: datetime,
    excused: Sequence[tuple[datetime, datetime]] = (),
    received_twice: int = 0,
) -> FiringCheck:
    """Every due time in [start, end] of every subscription must have exactly one firing whose
    hook was answered; lateness is sent_at - due_at. Due times inside an `excused` span (beat was
    down) may be missing: after downtime a subscription fires once, for the earliest missed due
    time, by design (README, "catch-up rule")."""
    check = FiringCheck(received_twice=received_twice)
    by_slot: dict[tuple[str, int], list[FiringRow]] = {}
    cadence_of = {c.subscription: c for c in cadences}
    for row in firings:
        cadence = cadence_of.get(row.subscription)
        if cadence is None:
            continue
        slot = round((row.due_at - cadence.first_due) / timedelta(seconds=cadence.interval))
        by_slot.setdefault((row.subscription, slot), []).append(row)
    for cadence in cadences:
        step = timedelta(seconds=cadence.interval)
        last = min(end, cadence.cancelled_at) if cadence.cancelled_at else end
        k = max(0, math.ceil((start - cadence.first_due) / step))  # the first due time >= start
        while cadence.first_due + k * step <= last:
            due = cadence.first_due + k * step
            rows = by_slot.get((cadence.subscription, k), [])
            check.due += 1
            if len(rows) > 1:
                check.duplicated_rows += len(rows) - 1
            answered = [r for r in rows if r.sent_at is not None and r.answered_at is not None]
            if answered:
                row = answered[0]
                check.delivered += 1
                lateness = (row.sent_at or row.due_at) - row.due_at
                check.lateness_ms.append(lateness.total_seconds() * 1000)
                if lateness > LATE:
                    check.late += 1
                check.refused += row.status == "refused"
                check.failed += row.status == "failed"
            elif not rows and (any(a <= due <= b for a, b in excused) or _caught_up(by_slot, cadence, k, due)):
                check.excused += 1
            else:
                if rows:
                    check.undelivered += 1
                else:
                    check.not_fired += 1
                if len(check.examples) < 10:
                    state = f"{rows[0].status}, never answered" if rows else "no firing"
                    check.examples.append(f"{cadence.label} due {due:%H:%M:%S.%f}: {state}")
            k += 1
    return check


def _caught_up(by_slot: dict[tuple[str, int], list[FiringRow]], cadence: Cadence, k: int, due: datetime) -> bool:
    """The slot before went out only after this one was due: the dispatcher was that late (a
    saturated machine), and the catch-up rule then fires once and moves on to the next due time
    after now, by design. An approximation from the hook's send time (a firing row keeps no claim
    time), so it may excuse a slot claimed in time and sent late; the lateness count shows those."""
    before = by_slot.get((cadence.subscription, k - 1), [])
    return any(row.sent_at is not None and row.sent_at >= due for row in before)


# --- memory and open files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float
    name: str
    pid: int
    rss: int  # bytes: the PSS of the process and its descendants (shared pages counted once)
    fds: int
    procs: int = 1  # the process and its descendants (PostgreSQL: one per connection)


@dataclass(frozen=True)
class Growth:
    name: str
    first_mb: float
    last_mb: float
    rss_pct: float | None  # None: restarted in between, or too few samples
    first_fds: float
    last_fds: float
    restarted: bool
    first_procs: float = 1
    last_procs: float = 1


def growth(samples: Sequence[Sample], *, start: float, end: float, window: float = 60.0) -> list[Growth]:
    """Median memory and open files in the first and in the last `window` seconds of the run,
    per process. A process that was restarted in between has no growth figure: its memory
    started again from zero."""
    found = []
    for name in sorted({s.name for s in samples}):
        mine = [s for s in samples if s.name == name and start <= s.at <= end]
        first = [s for s in mine if s.at <= start + window]
        last = [s for s in mine if s.at >= end - window]
        if not first or not last:
            continue
        restarted = len({s.pid for s in mine}) > 1
        first_rss, last_rss = statistics.median(s.rss for s in first), statistics.median(s.rss for s in last)
        pct = None if restarted or not first_rss else (last_rss - first_rss) / first_rss * 100
        found.append(
            Growth(
                name=name,
                first_mb=first_rss / 2**20,
                last_mb=last_rss / 2**20,
                rss_pct=pct,
                first_fds=statistics.median(s.fds for s in first),
                last_fds=statistics.median(s.fds for s in last),
                restarted=restarted,
                first_procs=statistics.median(s.procs for s in first),
                last_procs=statistics.median(s.procs for s in last),
            )
        )
    return found


def worst_growth(growths: Sequence[Growth]) -> float:
    values = [g.rss_pct for g in growths if g.rss_pct is not None]
    return max(values) if values else 0.0


# --- the table ---------------------------------------------------------------------------------


def growth_rows(growths: Sequence[Growth]) -> list[dict[str, Any]]:
    return [
        {
            "process": g.name,
            "mem first min MB": g.first_mb,
            "mem last min MB": g.last_mb,
            "growth %": "restarted" if g.restarted else (g.rss_pct if g.rss_pct is not None else "-"),
            "open files first": int(g.first_fds),
            "open files last": int(g.last_fds),
            "processes first": int(g.first_procs),
            "processes last": int(g.last_procs),
        }
        for g in growths
    ]
