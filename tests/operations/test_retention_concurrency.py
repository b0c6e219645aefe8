"""Retention with company: two pruners at once, and the pruner as a real worker runs it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection

from orchestrator.automations.models import Firing
from orchestrator.celery import app
from orchestrator.engine.models import Phase, StepRun
from orchestrator.operations.retention import Pruned, retention_prune
from tests.conftest import Workers, wait_until
from tests.operations import retention_rows as rows
from tests.operations.retention_rows import ids

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def export_dir(settings: Any, tmp_path: Path) -> Path:
    settings.RETENTION_FIRINGS_DAYS = 90
    settings.RETENTION_STEP_JOURNAL_DAYS = 30
    settings.RETENTION_IDEMPOTENCY_DAYS = 7
    settings.RETENTION_AUDIT_DAYS = 400
    settings.RETENTION_EXPORT_DIR = tmp_path / "audit-export"
    return settings.RETENTION_EXPORT_DIR


def _exported(directory: Path) -> list[dict[str, str]]:
    return [json.loads(line) for path in sorted(directory.rglob("*.jsonl")) for line in path.read_text().splitlines()]


def test_two_pruners_at_once_delete_everything_old_once_and_export_each_entry_once(export_dir: Path) -> None:
    sub = rows.subscription()
    rows.firings_bulk(sub, 600, age_days=100)
    young_firings = {rows.firing(sub, age_days=1).pk for _ in range(3)}
    done = [rows.run(Phase.COMPLETED, finished_days=40) for _ in range(20)]
    for run in done:
        rows.steps(run, age_days=41, n=3)
    admin_old = {rows.admin_entry(age_days=500, note=f"old {i}") for i in range(120)}
    admin_young = {rows.admin_entry(age_days=1, note="young")}
    outcomes: list[Pruned] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def prune() -> None:
        try:
            start.wait()
            outcomes.append(retention_prune(batch=7, pause=0))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=prune) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert errors == []
    assert ids(Firing) == young_firings
    assert not StepRun.objects.filter(run__in=done).exists()
    assert ids(LogEntry) == admin_young
    # Between them they deleted each row once; each deleted entry is in the export exactly once.
    assert sum(o.deleted["firings"] for o in outcomes) == 600
    assert sum(o.deleted["audit_admin"] for o in outcomes) == 120
    details = sorted(e["detail"] for e in _exported(export_dir))
    assert details == sorted(f"old {i}" for i in range(120))
    # A later run finds nothing left to do (a pruner that found the export lock taken left
    # nothing behind either: the other one finished the audit).
    assert sum(retention_prune(batch=7, pause=0).deleted.values()) == 0
    assert not admin_old & ids(LogEntry)


@pytest.mark.stack
def test_a_worker_runs_the_pruner_beat_sends(workers: Workers, tmp_path: Path, export_dir: Path) -> None:
    """The task beat sends (operations.retention_prune, on the workflows queue) as a real worker
    runs it, with the periods from its environment."""
    sub = rows.subscription()
    old = {rows.firing(sub, age_days=100).pk, rows.firing(sub, age_days=95).pk}
    young = {rows.firing(sub, age_days=1).pk}
    admin_old = rows.admin_entry(age_days=500, note="exported by the worker")
    workers.start(
        extra_env={
            "RETENTION_FIRINGS_DAYS": "90",
            "RETENTION_AUDIT_DAYS": "400",
            "RETENTION_EXPORT_DIR": str(export_dir),
        }
    )
    app.send_task("operations.retention_prune", queue="workflows")

    wait_until(lambda: ids(Firing) == young, timeout=60, message="the old firings to be pruned")
    wait_until(lambda: not LogEntry.objects.filter(pk=admin_old).exists(), timeout=60, message="the audit prune")
    assert not old & ids(Firing)
    [entry] = _exported(export_dir)
    assert entry["detail"] == "exported by the worker" and entry["source"] == "admin"
