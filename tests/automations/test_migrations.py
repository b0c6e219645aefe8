"""automations 0003: used config signatures are re-keyed on (signer, EIP-712 digest); the rows
written before are recomputed where they can be, and a replay the old byte-keyed check let
through keeps its row, without a key (the migration's comment says why)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from eth_account import Account

from orchestrator.automations.typed_data import kernel_action_recover, kernel_action_sign
from tests.factories import SigningKeyFactory
from tests.support.signatures import high_s_twin, recovery_bit, with_v

BEFORE = [("automations", "0002_firings")]
AFTER = [("automations", "0003_used_signature_by_digest")]


@pytest.fixture
def before() -> Iterator[Any]:
    """The app registry as of 0002, with the database migrated back to it; forward again after."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        yield executor.loader.project_state(BEFORE).apps
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def migrate_forward() -> Any:
    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    return executor.loader.project_state(AFTER).apps


@pytest.mark.django_db(transaction=True)
def test_old_rows_are_recomputed_and_the_replays_they_let_through_lose_their_key(before: Any) -> None:
    Executor = before.get_model("automations", "Executor")
    AutomationConfig = before.get_model("automations", "AutomationConfig")
    UsedSignature = before.get_model("automations", "UsedSignature")
    account = Account.create()
    owner = get_user_model().objects.create_user("migrated")
    executor = Executor.objects.create(owner_id=owner.pk, address=account.address, name="x", metadata={})
    url = "https://executor.example"

    def config() -> Any:
        return AutomationConfig.objects.create(
            executor=executor,
            source_type="INTERVAL",
            interval_seconds=30,
            base_url=url,
            verify_payload=True,
            hmac_version=1,
            hmac_nonce=b"n",
            hmac_ciphertext=b"c",
            verifying_key_id=SigningKeyFactory.create(purpose="operator").pk,
            status="deleted",
        )

    first, second = config(), config()
    created = kernel_action_sign(account, destination_url=url, verify_payload=True, action="CREATE")
    deleted = kernel_action_sign(account, destination_url=url, verify_payload=True, action="DELETE")
    rows = [
        UsedSignature.objects.create(signature=created, action="CREATE", config=first),
        UsedSignature.objects.create(signature=deleted, action="DELETE", config=first),
        # The replays: the twin of each, on a second config.
        UsedSignature.objects.create(signature=high_s_twin(created), action="CREATE", config=second),
        UsedSignature.objects.create(signature=high_s_twin(deleted), action="DELETE", config=second),
        # A v-0/1 encoding whose config is gone: nothing to recompute it from.
        UsedSignature.objects.create(signature=with_v(created, recovery_bit(created)), action="CREATE", config=None),
    ]

    after = migrate_forward()
    migrated = {row.pk: row for row in after.get_model("automations", "UsedSignature").objects.all()}

    assert len(migrated) == 5, "no row is dropped"
    for row, action, signature in ((rows[0], "CREATE", created), (rows[1], "DELETE", deleted)):
        expected = kernel_action_recover(destination_url=url, verify_payload=True, action=action, signature=signature)
        assert (migrated[row.pk].signer, migrated[row.pk].digest) == (account.address, expected.digest)
        assert migrated[row.pk].signature == signature
    for row in rows[2:]:
        assert (migrated[row.pk].signer, migrated[row.pk].digest) == ("", "")
        assert migrated[row.pk].signature == row.signature  # kept as sent, for history
