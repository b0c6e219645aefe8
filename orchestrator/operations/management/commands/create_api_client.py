"""./manage.py create_api_client NAME: creates an API client (a user) and prints its token."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create a REST API client (a user without a password) and print its token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Client name, used as its username.")
        parser.add_argument("--staff", action="store_true", help="Let it read every workflow run.")

    def handle(self, *args: Any, name: str, staff: bool, **options: Any) -> None:
        name = name.strip()
        if not name or len(name) > 150:
            raise CommandError("NAME must be 1 to 150 characters.")
        user, created = get_user_model().objects.get_or_create(username=name, defaults={"is_staff": staff})
        if created:
            user.set_unusable_password()
            user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stderr.write(f"{'Created' if created else 'Existing'} API client {name!r}. Token:")
        self.stdout.write(token.key)
