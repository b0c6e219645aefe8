"""Reads of vaults: which vaults a user may see; those on the hot path of every feed, in one
round trip each; and the relays of an intent.

`rebalance_inputs` is what Flow A's verify step reads: the feed, the vault's active policy
with the parts of the vault it needs (its intent nonce and its intent in flight included),
whether that policy trusts the feed's oracle, and the protocols (the chain's, and the
whitelist's, which may name other chains'). Built with the
ORM it was three queries whose construction alone cost more than their round trips; it runs
once per feed and vault, so it is one SQL statement, written once. Its columns come from the
models, and the tests run it against the migrated schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, TypedDict

from django.db import connection
from django.db.models import F, QuerySet

from relayer.models import Chain, RelayTransaction, SigningKey
from vaults.models import (
    IN_FLIGHT,
    POLICY_RULES,
    ExecutionIntent,
    OracleKey,
    PolicyStatus,
    Protocol,
    SignedFeed,
    Vault,
    VaultPolicy,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


def vaults_visible_to(*, user: Any) -> QuerySet[Vault]:
    """The vaults a user may read through the API: staff every vault, an API client those it
    has been granted (VaultGrant), anyone else none. Every vault, intent, proposal and run the
    API shows goes through this, and what it leaves out is answered 404, never 403."""
    vaults = Vault.objects.select_related("account", "operator")
    if not getattr(user, "is_authenticated", False):
        return vaults.none()
    if user.is_staff:
        return vaults
    # One grant per (client, vault): the join adds no duplicates.
    return vaults.filter(grants__client=user)


def vault_visible_to(*, user: Any, vault_id: Any) -> bool:
    """Whether the vault with this primary key is one the user may read."""
    return vaults_visible_to(user=user).filter(pk=vault_id).exists()


@dataclass(frozen=True)
class FeedRow:
    id: str
    digest: str
    timestamp: datetime
    entries: list[dict[str, Any]]
    signature: str
    oracle_id: int
    oracle_address: str


@dataclass(frozen=True)
class PolicyRow:
    pk: int
    version: int
    rules: dict[str, Any]  # POLICY_RULES -> value, as the model holds them
    trusts_oracle: bool
    strategy: str
    asset: str
    chain_id: int
    rpc_url: str
    account: str  # who holds the funds: the Safe, else the account key
    module: str  # the vault's policy module, "" for none
    committed_hash: str  # the hash this policy committed to the module, "" for none
    intent_nonce: int  # the vault's, now
    in_flight: int | None  # the nonce of the vault's intent still executing, if any
    protocols: list[tuple[str, str, int, bool]]  # (name, address, chain id, whitelisted)


@dataclass(frozen=True)
class RebalanceInputs:
    feed: FeedRow
    policy: PolicyRow | None  # None: the vault has no active policy


def _column(model: Any, field: str) -> str:
    return f'"{model._meta.get_field(field).column}"'


@cache
def _rebalance_inputs_sql() -> str:
    feed, oracle = SignedFeed._meta.db_table, OracleKey._meta.db_table
    policy, vault = VaultPolicy._meta.db_table, Vault._meta.db_table
    chain, key, protocol = Chain._meta.db_table, SigningKey._meta.db_table, Protocol._meta.db_table
    intent = ExecutionIntent._meta.db_table
    trusted = VaultPolicy.oracles.through._meta.db_table
    listed = VaultPolicy.whitelist.through._meta.db_table
    # Each rule's column under the rule's name.
    rules = ", ".join(f'p.{_column(VaultPolicy, name)} AS "{name}"' for name in POLICY_RULES)
    # Names from the models' metadata, values as parameters; every column named, and read by name.
    return f"""
        SELECT f."id" AS "feed_id", f."digest" AS "feed_digest", f."timestamp" AS "feed_timestamp",
               f."entries"::text AS "feed_entries", f."signature" AS "feed_signature",
               f."oracle_id" AS "oracle_id", o."address" AS "oracle_address",
               p."id" AS "policy_id", p."version" AS "policy_version", {rules},
               EXISTS (SELECT 1 FROM "{trusted}" t
                        WHERE t."vaultpolicy_id" = p."id" AND t."oraclekey_id" = f."oracle_id") AS "trusts_oracle",
               v."strategy" AS "strategy", v."asset_address" AS "asset", v."chain_id" AS "chain_id",
               c."rpc_url" AS "rpc_url", coalesce(nullif(v."safe_address", ''), k."address") AS "account",
               v."module_address" AS "module", p."committed_hash" AS "committed_hash",
               v."intent_nonce" AS "intent_nonce",
               (SELECT i."nonce" FROM "{intent}" i
                 WHERE i."vault_id" = p."vault_id" AND i."status" = ANY(%s)
                 ORDER BY i."nonce" DESC LIMIT 1) AS "in_flight",
               (SELECT coalesce(json_agg(json_build_array(pr."name", pr."address", pr."chain_id",
                                                          w."protocol_id" IS NOT NULL)
                                        ORDER BY pr."name"), '[]')::text
                  FROM "{protocol}" pr
                  LEFT JOIN "{listed}" w ON w."protocol_id" = pr."id" AND w."vaultpolicy_id" = p."id"
                 WHERE p."id" IS NOT NULL AND (pr."chain_id" = v."chain_id" OR w."protocol_id" IS NOT NULL))
                 AS "protocols"
          FROM "{feed}" f
          JOIN "{oracle}" o ON o."id" = f."oracle_id"
          LEFT JOIN "{policy}" p ON p."vault_id" = %s AND p."status" = %s
          LEFT JOIN "{vault}" v ON v."id" = p."vault_id"
          LEFT JOIN "{chain}" c ON c."chain_id" = v."chain_id"
          LEFT JOIN "{key}" k ON k."id" = v."account_id"
         WHERE f."id" = %s
    """  # noqa: S608


def rebalance_inputs(*, vault_id: int, feed_id: str) -> RebalanceInputs | None:
    """The feed and the vault's active policy as verify needs them; None if the feed is gone."""
    with connection.cursor() as cursor:
        cursor.execute(_rebalance_inputs_sql(), [list(IN_FLIGHT), vault_id, PolicyStatus.ACTIVE, feed_id])
        values = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    if values is None:
        return None
    row = dict(zip(names, values, strict=True))
    feed = FeedRow(
        id=str(row["feed_id"]),
        digest=row["feed_digest"],
        timestamp=row["feed_timestamp"],
        entries=json.loads(row["feed_entries"]),
        signature=row["feed_signature"],
        oracle_id=row["oracle_id"],
        oracle_address=row["oracle_address"],
    )
    if row["policy_id"] is None:
        return RebalanceInputs(feed=feed, policy=None)
    return RebalanceInputs(
        feed=feed,
        policy=PolicyRow(
            pk=row["policy_id"],
            version=row["policy_version"],
            rules={name: row[name] for name in POLICY_RULES},
            trusts_oracle=row["trusts_oracle"],
            strategy=row["strategy"],
            asset=row["asset"],
            chain_id=row["chain_id"],
            rpc_url=row["rpc_url"],
            account=row["account"],
            module=row["module"],
            committed_hash=row["committed_hash"],
            intent_nonce=row["intent_nonce"],
            in_flight=row["in_flight"],
            protocols=[tuple(p) for p in json.loads(row["protocols"])],
        ),
    )


class _Position(TypedDict):
    position: int


def intent_relays(*, intent_id: Any) -> QuerySet[WithAnnotations[RelayTransaction, _Position]]:
    """The relays carrying an intent's actions, in the actions' order, each with `position`
    (its action's index in the intent)."""
    return (
        RelayTransaction.objects.filter(intent_link__intent_id=intent_id)
        .annotate(position=F("intent_link__position"))
        .order_by("intent_link__position")
    )
