"""The two staff groups of Flow B, with the permissions the admin needs, kept after every migrate.

A post_migrate handler rather than a data migration: pytest-django's transactional tests flush
every table (groups and permissions included) and only post_migrate runs again afterwards."""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import DEFAULT_DB_ALIAS

from approvals.selectors import APPROVERS_GROUP, OPERATORS_GROUP

GROUP_PERMISSIONS: dict[str, list[tuple[str, str]]] = {
    APPROVERS_GROUP: [
        ("approvals", "view_rebalanceproposal"),
        ("approvals", "view_approval"),
        ("vaults", "view_vault"),
    ],
    OPERATORS_GROUP: [
        ("approvals", "add_rebalanceproposal"),
        ("approvals", "view_rebalanceproposal"),
        ("approvals", "view_approval"),
        ("vaults", "view_vault"),
    ],
}


def groups_ensure(*, apps: Any = global_apps, using: str = DEFAULT_DB_ALIAS) -> None:
    """Creates the groups if missing and adds their permissions (never removes any an admin
    added by hand)."""
    # Permissions are made by auth's own post_migrate handler app by app; the vaults ones may
    # not exist yet when this runs for approvals, so make sure of both first (idempotent).
    for label in {app for perms in GROUP_PERMISSIONS.values() for app, _ in perms}:
        create_permissions(global_apps.get_app_config(label), verbosity=0, using=using, apps=apps)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, wanted in GROUP_PERMISSIONS.items():
        group, _ = group_model.objects.using(using).get_or_create(name=name)
        for app_label, codename in wanted:
            permission = permission_model.objects.using(using).get(content_type__app_label=app_label, codename=codename)
            group.permissions.add(permission)


def on_post_migrate(sender: Any, *, apps: Any = global_apps, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    if sender.name == "approvals":
        groups_ensure(apps=apps, using=using)
