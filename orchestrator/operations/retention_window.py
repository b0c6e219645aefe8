"""The keyset walk retention uses for tables whose bigint ids grow with their rows' time
(retention.py): a window of the next ids, and those of them that may go, locked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from orchestrator.engine.models import FINAL_PHASES

FINAL_SQL = ", ".join(f"'{phase}'" for phase in FINAL_PHASES)
# A run that is final, and has been for the period: its journal and transitions may go.
RUN_JOIN = "JOIN orchestrator_workflowrun r ON r.id = t.run_id"
RUN_FINAL_SQL = f"r.phase IN ({FINAL_SQL}) AND r.finished_at < %(cutoff)s"


@dataclass(frozen=True)
class IdKind:
    """A table whose bigint ids grow with its rows' time: pruned by walking its primary key."""

    name: str
    table: str
    at: str  # the row's own time: the window of a batch is "aged" while it holds old rows
    join: str = ""
    prunable: str = "TRUE"


def _window_sql(kind: IdKind) -> str:
    """The next `batch` ids after `after`, whether any of them is old by its own time, and those
    of them that are prunable, locked (rows another pruner holds are skipped)."""
    return f"""
WITH win AS (
    SELECT id, {kind.at} < %(cutoff)s AS aged FROM {kind.table}
    WHERE id > %(after)s ORDER BY id LIMIT %(batch)s
)
SELECT (SELECT max(id) FROM win), (SELECT coalesce(bool_or(aged), false) FROM win),
       ARRAY(
           SELECT t.id FROM {kind.table} t JOIN win ON win.id = t.id AND win.aged {kind.join}
           WHERE {kind.prunable} ORDER BY t.id FOR UPDATE OF t SKIP LOCKED
       )
"""  # noqa: S608 (the kinds are constants of retention.py and retention_audit.py)


def kind_window(kind: IdKind, *, cutoff: datetime, after: int, batch: int) -> tuple[int | None, bool, list[int]]:
    """(last id looked at, whether the window still held old rows, the prunable ids, locked);
    call inside the batch's transaction."""
    with connection.cursor() as cursor:
        cursor.execute(_window_sql(kind), {"cutoff": cutoff, "after": after, "batch": batch})
        last, aged, ids = cursor.fetchone()
    return last, aged, list(ids)
