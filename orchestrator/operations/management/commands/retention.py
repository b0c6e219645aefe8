"""./manage.py retention prune [--max-rows N] [--max-seconds S]: one run of beat's pruner, now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from orchestrator.operations.retention import retention_prune


class Command(BaseCommand):
    help = "Delete what is older than its retention period and finished (docs/operations.md, Retention)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        prune = sub.add_parser("prune", help="One run, as beat's operations.retention_prune does.")
        prune.add_argument("--max-rows", type=int, help="Rows per kind (default RETENTION_MAX_ROWS).")
        prune.add_argument("--max-seconds", type=float, help="Seconds in all (default RETENTION_MAX_SECONDS).")

    def handle(self, *args: Any, max_rows: int | None, max_seconds: float | None, **_: Any) -> None:
        result = retention_prune(max_rows=max_rows, max_seconds=max_seconds)
        for kind, n in result.deleted.items():
            self.stdout.write(f"{kind}: {n} deleted")
        self.stdout.write(f"audit files written: {result.exported_files}")
        if result.more_left or result.not_reached:
            self.stdout.write(f"more left in: {', '.join(result.more_left + result.not_reached)}")
