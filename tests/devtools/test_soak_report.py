"""`bench soak`'s arithmetic without the system: log-line classification, deaths read from
`up`'s output, firings checked against their cadence, memory growth, the RESULT line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.soak_report import (
    Cadence,
    FiringRow,
    Sample,
    deaths,
    deaths_not_caused,
    error_kinds,
    error_lines,
    firings_check,
    growth,
    normalized,
    worst_growth,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_it_counts_error_lines_of_every_format_and_not_the_others() -> None:
    text = "\n".join(
        [
            "2026-01-01 12:00:00,001 INFO orchestrator.engine [abc] workflow x step 1 done",
            "2026-01-01 12:00:01,002 ERROR automations [abc] hook failed: 3f2a9c1e-1111-2222-3333-444455556666",
            "2026-01-01 12:00:02,003 WARNING relayer [-] low balance",
            "[2026-01-01 12:00:03,004: ERROR/ForkPoolWorker-2] Task automations.deliver[77] raised unexpected: X",
            "[2026-01-01 12:00:04 +0000] [42] [CRITICAL] WORKER TIMEOUT (pid:43)",
            '{"ts": "2026-01-01T12:00:05", "level": "ERROR", "logger": "vaults", "message": "feed 12 refused"}',
            '{"ts": "2026-01-01T12:00:06", "level": "INFO", "logger": "vaults", "message": "ERROR in a message"}',
        ]
    )
    found = error_lines("worker", text)
    assert [line.kind.split(":")[0] for line in found] == [
        "automations ERROR",
        "celery ERROR",
        "gunicorn CRITICAL",
        "vaults ERROR",
    ]
    assert "<id>" in found[0].kind


def test_it_reads_postgres_levels_and_ignores_its_detail_lines() -> None:
    text = "\n".join(
        [
            "2026-01-01 12:00:00.123 UTC [99] LOG:  database system is ready to accept connections",
            '2026-01-01 12:00:01.123 UTC [100] ERROR:  duplicate key value violates unique constraint "k"',
            "2026-01-01 12:00:01.123 UTC [100] STATEMENT:  INSERT INTO x VALUES (1)",
            "2026-01-01 12:00:02.123 UTC [101] FATAL:  sorry, too many clients already",
        ]
    )
    kinds = [line.kind for line in error_lines("postgres", text)]
    assert kinds == [
        "postgres ERROR: duplicate key value violates unique constraint <s>",
        "postgres FATAL: sorry, too many clients already",
    ]


def test_a_traceback_after_an_error_line_is_that_line_and_a_lone_one_counts_by_its_exception() -> None:
    text = "\n".join(
        [
            "[2026-01-01 12:00:00,000: ERROR/MainProcess] Unrecoverable error: JSONDecodeError('x')",
            "Traceback (most recent call last):",
            '  File "kombu/transport/filesystem.py", line 1, in _get',
            "    payload = loads(data)",
            "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
            "[2026-01-01 12:00:01,000: INFO/MainProcess] restarted",
            "Exception occurred during processing of request from ('127.0.0.1', 5555)",
            "Traceback (most recent call last):",
            '  File "x.py", line 2, in f',
            "KeyError: 'requestID'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            '  File "x.py", line 3, in g',
            "BrokenPipeError: [Errno 32] Broken pipe",
        ]
    )
    found = error_lines("executor", text)
    assert len(found) == 2
    assert found[0].kind.endswith("[JSONDecodeError: Expecting value: line <n> column <n> (char <n>)]")
    assert found[1].kind == "traceback: BrokenPipeError: [Errno <n>] Broken pipe"


def test_error_kinds_group_lines_that_differ_only_in_ids() -> None:
    text = "\n".join(
        f"2026-01-01 12:00:0{i},000 ERROR relayer [c{i}] broadcast 0x{i}abc failed for run {i}" for i in range(3)
    )
    [(source, kind, count, example)] = error_kinds(error_lines("worker", text))
    assert (source, count) == ("worker", 3)
    assert kind == "relayer ERROR: broadcast <hex> failed for run <n>"
    assert example.endswith("run 0")


def test_normalized_cuts_long_messages() -> None:
    assert len(normalized("x" * 500)) == 70


def test_deaths_are_read_from_ups_lines() -> None:
    lines = [
        (1.0, "[9/11] Starting the web server ... ok"),
        (2.0, "worker died (killed by SIGKILL); restarting it (restart 1)"),
        (3.0, "valkey died; stopped everything else."),
    ]
    found = deaths(lines)
    assert [(d.name, d.restarted, d.at) for d in found] == [("worker", True, 2.0), ("valkey", False, 3.0)]


def _cadence(cancelled_at: datetime | None = None) -> Cadence:
    return Cadence("s1", "soak", 2, T0, cancelled_at)


def _fired(k: int, *, late: float = 0.1, answered: bool = True, status: str = "skipped") -> FiringRow:
    due = T0 + timedelta(seconds=2 * k)
    sent = due + timedelta(seconds=late)
    return FiringRow("s1", due, sent, sent if answered else None, status)


def test_every_due_time_answered_once_is_neither_missed_nor_duplicated() -> None:
    rows = [_fired(k) for k in range(11)]
    check = firings_check([_cadence()], rows, start=T0, end=T0 + timedelta(seconds=20))
    assert (check.due, check.delivered, check.missed, check.duplicated, check.late) == (11, 11, 0, 0, 0)


def test_missing_unanswered_duplicated_and_late_firings_are_counted() -> None:
    rows = [
        _fired(0),
        _fired(1, late=3.5),
        _fired(2, answered=False),
        _fired(4),
        _fired(4),
        _fired(5, status="refused"),
    ]
    check = firings_check([_cadence()], rows, start=T0, end=T0 + timedelta(seconds=10), received_twice=1)
    assert (check.due, check.delivered) == (6, 4)
    assert (check.not_fired, check.undelivered, check.missed) == (1, 1, 2)
    assert check.duplicated == 2  # one due time fired twice, one hook received twice
    assert (check.late, check.refused) == (1, 1)
    assert len(check.examples) == 2


def test_due_times_while_beat_was_down_are_excused_only_if_nothing_fired() -> None:
    rows = [_fired(k) for k in (0, 1, 4, 5)]
    down = [(T0 + timedelta(seconds=3), T0 + timedelta(seconds=7))]
    check = firings_check([_cadence()], rows, start=T0, end=T0 + timedelta(seconds=10), excused=down)
    assert (check.excused, check.missed) == (2, 0)


def test_the_window_starts_at_the_first_due_time_after_start_and_stops_at_a_cancel() -> None:
    cancelled = T0 + timedelta(seconds=6)
    rows = [_fired(k) for k in (1, 2, 3)]
    check = firings_check(
        [_cadence(cancelled_at=cancelled)], rows, start=T0 + timedelta(seconds=1), end=T0 + timedelta(seconds=60)
    )
    assert (check.due, check.missed) == (3, 0)


def test_growth_compares_the_first_minute_with_the_last_and_skips_restarted_processes() -> None:
    samples = [Sample(at, "web", 10, 100 * 2**20 if at < 100 else 110 * 2**20, 20) for at in range(0, 600, 5)]
    samples += [Sample(at, "worker", 20 if at < 300 else 21, 2**27, 30) for at in range(0, 600, 5)]
    web, worker = growth(samples, start=0, end=595)
    assert web.rss_pct is not None and round(web.rss_pct) == 10
    assert (worker.restarted, worker.rss_pct) == (True, None)
    assert worst_growth([web, worker]) == web.rss_pct


def test_the_result_line_has_the_issues_shape() -> None:
    line = common.result_line(
        "soak",
        {
            "minutes": 30,
            "deaths": 0,
            "http_5xx": 0,
            "error_lines": 0,
            "missed": 0,
            "duplicated": 0,
            "unconfirmed": 0,
            "rss_growth_pct": 4.5,
        },
    )
    assert line == (
        "RESULT soak minutes=30 deaths=0 http_5xx=0 error_lines=0 missed=0 duplicated=0 unconfirmed=0 "
        "rss_growth_pct=4.50"
    )


def test_a_kill_explains_the_first_death_after_it_and_a_failed_restart_is_a_death_of_its_own() -> None:
    found = deaths(
        [
            (10.0, "web died (was killed by SIGKILL); restarting it (restart 1)"),
            (12.0, "web died (exited (1)); restarting it (restart 2)"),
            (20.0, "beat died (exited (1)); restarting it (restart 1)"),
        ]
    )
    left = deaths_not_caused(found, [("web", 9.5)])
    assert [(d.name, d.at) for d in left] == [("web", 12.0), ("beat", 20.0)]


def test_lines_quoted_in_ups_log_are_not_counted_again() -> None:
    text = "\n".join(
        [
            "web died (exited (1)); restarting it (restart 2). Last lines of its log:",
            "    [2026-01-01 12:00:00 +0000] [7] [ERROR] Can't connect to ('127.0.0.1', 8000)",
        ]
    )
    assert error_lines("up", text) == []
