"""./manage.py audit export --since DATE [--until DATE] [--format csv|json|jsonl] [--output FILE]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.operations.audit import FORMATS, BadAuditRange, audit_export, audit_range


class Command(BaseCommand):
    help = "Export the audit log (transitions, approvals, admin changes) for a date range."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="Write the entries with since <= time < until, oldest first.")
        export.add_argument("--since", required=True, help="A date (that whole day, UTC) or an ISO date and time.")
        export.add_argument("--until", help="A date (inclusive) or an ISO date and time (exclusive); default now.")
        export.add_argument("--format", choices=FORMATS, default="csv")
        export.add_argument("--output", help="A file to write instead of stdout.")

    def handle(self, *args: Any, since: str, until: str | None, format: str, output: str | None, **_: Any) -> None:
        try:
            start, stop = audit_range(since, until)
        except BadAuditRange as exc:
            raise CommandError(str(exc)) from exc
        chunks = audit_export(since=start, until=stop, format=format)
        if output:
            with Path(output).open("w", encoding="utf-8", newline="") as out:
                out.writelines(chunks)
            self.stderr.write(f"Wrote {output}")
            return
        for chunk in chunks:
            self.stdout.write(chunk, ending="")  # the chunks carry their own line ends
        self.stdout.flush()
