"""What the apps' admins share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.contrib import admin, messages
from django.db.models import Model
from django.http import HttpRequest

from orchestrator.infra.errors import DomainError


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records that only services write (journals, audit rows, transactions, signed data): staff
    can read them, nobody can add, change or delete them here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class DomainErrorAdminMixin:
    """The admin's one translation of a DomainError: its message shown to the user as an error,
    the page answered as if the action had not been tried. Use around any service call:

        with self.domain_errors(request):
            proposal_decide(...)
    """

    @contextmanager
    def domain_errors(self, request: HttpRequest) -> Iterator[None]:
        try:
            yield
        except DomainError as exc:
            messages.error(request, exc.message)
