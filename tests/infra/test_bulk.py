"""orchestrator/infra/bulk.py: rows_update writes each row its own values in one statement, of
every column type the relayer writes that way, and only where `only_if` holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, transaction
from django.test.utils import CaptureQueriesContext

from orchestrator.infra.bulk import rows_update
from relayer.keys import key_manager
from relayer.models import RelayTransaction, TxPhase
from tests.support.relays import RECEIVER, closed_url, make_chain

pytestmark = pytest.mark.django_db


def _requests(count: int) -> list[RelayTransaction]:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    return RelayTransaction.objects.bulk_create(
        RelayTransaction(signer=signer, chain=chain, to=RECEIVER, idempotency_key=f"bulk-{n}", correlation_id=f"c-{n}")
        for n in range(count)
    )


def test_each_row_gets_its_own_values_nulls_and_uint256_included() -> None:
    txs = _requests(3)
    when = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    for n, tx in enumerate(txs):
        tx.nonce = None if n == 1 else n
        tx.max_fee_per_gas = 2**256 - 1 - n  # any uint256: 78 digits
        tx.phase = [TxPhase.SUBMITTING, TxPhase.CONFIRMING, TxPhase.COMPLETED][n]
        tx.error = "" if n else "it said 'no'; \\ % %s"  # quoted as a value, never as SQL
        tx.last_broadcast_at = when + timedelta(seconds=n) if n != 2 else None
    assert rows_update(RelayTransaction, txs, ["nonce", "max_fee_per_gas", "phase", "error", "last_broadcast_at"]) == 3
    stored = {tx.pk: tx for tx in RelayTransaction.objects.filter(pk__in=[tx.pk for tx in txs])}
    for n, tx in enumerate(txs):
        got = stored[tx.pk]
        assert got.nonce == (None if n == 1 else n)
        assert got.max_fee_per_gas == Decimal(2**256 - 1 - n)
        assert got.phase == [TxPhase.SUBMITTING, TxPhase.CONFIRMING, TxPhase.COMPLETED][n]
        assert got.error == ("" if n else "it said 'no'; \\ % %s")
        assert got.last_broadcast_at == (when + timedelta(seconds=n) if n != 2 else None)
        assert got.correlation_id == f"c-{n}"  # a field not named is left alone


def test_only_rows_whose_fields_hold_are_written_and_counted() -> None:
    txs = _requests(2)
    RelayTransaction.objects.filter(pk=txs[1].pk).update(phase=TxPhase.FAILED)
    for tx in txs:
        tx.error = "late"
    assert rows_update(RelayTransaction, txs, ["error"], only_if={"phase": TxPhase.PENDING}) == 1
    assert dict(RelayTransaction.objects.values_list("pk", "error")) == {txs[0].pk: "late", txs[1].pk: ""}


def test_the_statement_is_the_same_whatever_the_number_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # psycopg caches the parse of a statement it has seen; one that grew with the rows was
    # parsed again on every call.
    txs = _requests(40)
    statements = []
    execute = psycopg.Cursor.execute

    def recorded(cursor: psycopg.Cursor[Any], query: Any, params: Any = None, **kwargs: Any) -> Any:
        statements.append(query)
        return execute(cursor, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recorded)
    for size in (1, 7, 40):
        for tx in txs[:size]:
            tx.error = f"size {size}"
        assert rows_update(RelayTransaction, txs[:size], ["error"]) == size
    assert len(statements) == 3 and len(set(statements)) == 1
    assert RelayTransaction.objects.filter(error="size 40").count() == 40


def test_a_database_error_is_djangos_and_leaves_the_transaction_to_roll_back() -> None:
    first, second = _requests(2)
    second.idempotency_key = first.idempotency_key  # a unique column
    with pytest.raises(IntegrityError), transaction.atomic():
        rows_update(RelayTransaction, [second], ["idempotency_key"])
    assert RelayTransaction.objects.get(pk=second.pk).idempotency_key == "bulk-1"


def test_no_objects_no_statement() -> None:
    with CaptureQueriesContext(transaction.get_connection()) as queries:
        assert rows_update(RelayTransaction, [], ["error"]) == 0
    assert not queries.captured_queries
