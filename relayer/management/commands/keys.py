"""./manage.py keys list|create|rotate-master|new-master-key"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from relayer.keys import KeyManagerError, key_manager, master_key_rotate, master_keys, new_master_key_entry
from relayer.models import KeyPurpose, SigningKey
from relayer.services.funding import dev_funding_after_commit


class Command(BaseCommand):
    help = "Manage signing keys. Private keys are never printed."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="Addresses, purposes and master key versions.")
        create = sub.add_parser(
            "create", help="Generate a key; prints its address (a relayer key is funded on development chains)."
        )
        create.add_argument("--purpose", required=True, choices=KeyPurpose.values)
        create.add_argument("--label", default="")
        sub.add_parser(
            "rotate-master",
            help="Re-seal every key and sealed secret under the newest master key; prints counts per kind.",
        )
        sub.add_parser(
            "new-master-key",
            help="Print a new master key entry (version N+1) for KEY_MASTER_KEYS.",
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            if action == "list":
                for key in SigningKey.objects.all():
                    self.stdout.write(f"{key.address}  {key.purpose:<9} v{key.master_key_version}  {key.label}")
            elif action == "create":
                key = key_manager().create_key(purpose=options["purpose"], label=options["label"])
                if key.purpose == KeyPurpose.RELAYER:
                    dev_funding_after_commit(keys=[key])  # autocommit: funded now, on development chains
                self.stdout.write(key.address)
            elif action == "rotate-master":
                counts = master_key_rotate()
                for kind, count in counts.items():
                    self.stdout.write(f"{kind}: {count} re-sealed")
                self.stdout.write(
                    f"everything sealed is under master key v{master_keys().current}: the older ones may go"
                )
            elif action == "new-master-key":
                entry = new_master_key_entry(master_keys().current + 1)
                self.stderr.write("Prepend this to KEY_MASTER_KEYS (comma-separated), restart, then rotate-master:")
                self.stdout.write(entry)
        except KeyManagerError as exc:
            raise CommandError(str(exc)) from exc
