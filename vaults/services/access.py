"""Which API clients may read which vaults: grants made by an operator (the admin, or
`manage.py create_api_client --vault`), read through `vaults.selectors.vaults_visible_to`."""

from __future__ import annotations

import logging
from typing import Any

from vaults.models import Vault, VaultGrant

logger = logging.getLogger("vaults.access")


def vault_grant(*, client: Any, vault: Vault, granted_by: Any = None) -> tuple[VaultGrant, bool]:
    """Lets `client` read `vault`. Granting twice changes nothing (the first grant, and who made
    it, stay). Returns (grant, created)."""
    grant, created = VaultGrant.objects.get_or_create(client=client, vault=vault, defaults={"granted_by": granted_by})
    if created:
        by = granted_by.get_username() if granted_by is not None else "-"
        logger.info("%s may read %s (granted by %s)", client.get_username(), vault.vault_id, by)
    return grant, created


def vault_revoke(*, client: Any, vault: Vault) -> bool:
    """Takes the grant away; the vault is 404 to the client from its next request. Returns
    whether there was one."""
    deleted, _ = VaultGrant.objects.filter(client=client, vault=vault).delete()
    if deleted:
        logger.info("%s may no longer read %s", client.get_username(), vault.vault_id)
    return bool(deleted)
