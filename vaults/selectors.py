"""Reads on the hot path of every feed, in one round trip each.

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
from typing import Any

from django.db import connection

from relayer.models import Chain, SigningKey
from vaults.models import ExecutionIntent, OracleKey, PolicyStatus, Protocol, SignedFeed, Vault, VaultPolicy
from vaults.services.intents import IN_FLIGHT
from vaults.services.policies import COMPARED as POLICY_RULES


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
    account: str
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
    rules = ", ".join(f"p.{_column(VaultPolicy, name)}" for name in POLICY_RULES)
    # Names from the models' metadata, values as parameters.
    return f"""
        SELECT f."id", f."digest", f."timestamp", f."entries"::text, f."signature", f."oracle_id", o."address",
               p."id", p."version", {rules},
               EXISTS (SELECT 1 FROM "{trusted}" t
                        WHERE t."vaultpolicy_id" = p."id" AND t."oraclekey_id" = f."oracle_id"),
               v."strategy", v."asset_address", v."chain_id", c."rpc_url", k."address", v."intent_nonce",
               (SELECT i."nonce" FROM "{intent}" i
                 WHERE i."vault_id" = p."vault_id" AND i."status" = ANY(%s)
                 ORDER BY i."nonce" DESC LIMIT 1),
               (SELECT coalesce(json_agg(json_build_array(pr."name", pr."address", pr."chain_id",
                                                          w."protocol_id" IS NOT NULL)
                                        ORDER BY pr."name"), '[]')::text
                  FROM "{protocol}" pr
                  LEFT JOIN "{listed}" w ON w."protocol_id" = pr."id" AND w."vaultpolicy_id" = p."id"
                 WHERE p."id" IS NOT NULL AND (pr."chain_id" = v."chain_id" OR w."protocol_id" IS NOT NULL))
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
        row = cursor.fetchone()
    if row is None:
        return None
    feed = FeedRow(
        id=str(row[0]),
        digest=row[1],
        timestamp=row[2],
        entries=json.loads(row[3]),
        signature=row[4],
        oracle_id=row[5],
        oracle_address=row[6],
    )
    if row[7] is None:
        return RebalanceInputs(feed=feed, policy=None)
    n = len(POLICY_RULES)
    rules = dict(zip(POLICY_RULES, row[9 : 9 + n], strict=True))
    trusts, strategy, asset, chain_id, rpc_url, account, intent_nonce, in_flight, protocols = row[9 + n :]
    return RebalanceInputs(
        feed=feed,
        policy=PolicyRow(
            pk=row[7],
            version=row[8],
            rules=rules,
            trusts_oracle=trusts,
            strategy=strategy,
            asset=asset,
            chain_id=chain_id,
            rpc_url=rpc_url,
            account=account,
            intent_nonce=intent_nonce,
            in_flight=in_flight,
            protocols=[tuple(p) for p in json.loads(protocols)],
        ),
    )
