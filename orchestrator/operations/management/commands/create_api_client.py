"""./manage.py create_api_client NAME [--vault VAULT_ID ...]: creates an API client (a user),
grants it the vaults named, and prints its token."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

from vaults.models import Vault
from vaults.services.access import vault_grant


class Command(BaseCommand):
    help = "Create a REST API client (a user without a password), grant it vaults, and print its token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Client name, used as its username.")
        parser.add_argument("--staff", action="store_true", help="Let it read every vault and workflow run.")
        parser.add_argument(
            "--vault",
            action="append",
            default=[],
            metavar="VAULT_ID",
            help="Let it read this vault (repeat for more). Also for an existing client.",
        )

    def handle(self, *args: Any, name: str, staff: bool, vault: list[str], **options: Any) -> None:
        name = name.strip()
        if not name or len(name) > 150:
            raise CommandError("NAME must be 1 to 150 characters.")
        vaults = {v.vault_id: v for v in Vault.objects.filter(vault_id__in=vault)}
        unknown = sorted(set(vault) - set(vaults))
        if unknown:
            # Checked before anything is made: a typo creates no half-configured client.
            raise CommandError(f"No vault with id {', '.join(unknown)}.")
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(username=name, defaults={"is_staff": staff})
            if created:
                user.set_unusable_password()
                user.save()
            token, _ = Token.objects.get_or_create(user=user)
            granted = [vault_id for vault_id, v in sorted(vaults.items()) if vault_grant(client=user, vault=v)[1]]
        self.stderr.write(f"{'Created' if created else 'Existing'} API client {name!r}. Token:")
        if granted:
            self.stderr.write(f"Granted: {', '.join(granted)}.")
        self.stdout.write(token.key)
