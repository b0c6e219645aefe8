"""./manage.py create_api_client NAME [--vault VAULT_ID ...] [--rotate]: creates an API client (a
user), grants it the vaults named, and prints its token.

Tokens are stored as a hash (orchestrator/infra/tokens.py): the token is printed once, when it is
issued. For an existing client the command grants the vaults named and prints no token, unless
`--rotate` issues a new one (the old one stops working)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from orchestrator.infra.tokens import api_token_issue
from vaults.models import Vault
from vaults.services.access import vault_grant


class Command(BaseCommand):
    help = (
        "Create a REST API client (a user without a password), grant it vaults, and print its token "
        "(once: only its hash is stored). For an existing client, --rotate prints a new token."
    )

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
        parser.add_argument(
            "--rotate",
            action="store_true",
            help="For an existing client: issue and print a new token; its old token stops working.",
        )

    def handle(self, *args: Any, name: str, staff: bool, vault: list[str], rotate: bool, **options: Any) -> None:
        name = name.strip()
        if not name or len(name) > 150:
            raise CommandError("NAME must be 1 to 150 characters.")
        vaults = {v.vault_id: v for v in Vault.objects.filter(vault_id__in=vault)}
        unknown = sorted(set(vault) - set(vaults))
        if unknown:
            # Checked before anything is made: a typo creates no half-configured client.
            raise CommandError(f"No vault with id {', '.join(unknown)}.")
        token: str | None = None
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(username=name, defaults={"is_staff": staff})
            if created:
                user.set_unusable_password()
                user.save()
            if created or rotate:
                token = api_token_issue(user=user)
            granted = [vault_id for vault_id, v in sorted(vaults.items()) if vault_grant(client=user, vault=v)[1]]
        if created:
            self.stderr.write(f"Created API client {name!r}. Token (shown once, only its hash is stored):")
        elif token:
            self.stderr.write(f"Existing API client {name!r}: new token (the old one no longer works):")
        else:
            # Only the hash is stored: the token it was given cannot be shown again.
            self.stderr.write(
                f"Existing API client {name!r}: its token was shown when it was issued and is not stored. "
                f"To replace it: manage.py create_api_client {name} --rotate"
            )
        if granted:
            self.stderr.write(f"Granted: {', '.join(granted)}.")
        if token:
            self.stdout.write(token)
