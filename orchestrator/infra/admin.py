"""DRF's Token admin, made harmless for hashed tokens (orchestrator/infra/tokens.py).

DRF's own TokenAdmin lists keys and lets staff "add" a token for a user, which would store a raw
key that then never authenticates (the lookup is by digest). Here tokens are read-only: the list
shows whose token exists and since when, never a key (the digest is harmless, but says nothing
useful either). Deleting one revokes it. A new token comes from `manage.py create_api_client`."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class HashedTokenAdmin(TokenAdmin):
    list_display = ("user", "created")
    fields = ("user", "created")
    readonly_fields = ("user", "created")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
