"""One UPDATE statement for many rows, each with its own values.

Django's `bulk_update` builds a CASE WHEN per field per row and resolves every expression in
Python: measured here, 1.6 s for 500 rows of four fields, the most expensive part of
dispatching 500 firings. This writes `UPDATE t SET f = v.f FROM unnest(%b::type[], ...) AS
v(pk, f) WHERE t.pk = v.pk [AND t.f = ...]` instead: one array per column, values prepared by
each field as the ORM would, each array cast to its column's type.

The arrays go as binary parameters of a server-side-binding cursor on Django's connection (so
inside the caller's transaction), and the statement's text depends only on the model and the
fields, never on the number of rows. The earlier form, a VALUES row of parameters per object
through Django's client-side binding, made psycopg parse a statement thousands of characters
long on every call and quote each value in Python: bench relayer measured 2.4-2.8 ms of CPU for
80 rows of six fields, against 1.9 with arrays, and the psycopg parse alone was 3% of a relay
worker's CPU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model


@cache
def _statement(model: type[Model], fields: tuple[str, ...], conditions: tuple[str, ...]) -> str:
    meta = model._meta
    pk = meta.pk
    assert pk is not None
    columns: list[Any] = [pk, *(meta.get_field(name) for name in fields)]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    names = [quote(field.column) for field in columns]
    assignments = ", ".join(f"{name} = v.{name}" for name in names[1:])
    arrays = ", ".join(f"%b::{field.db_type(connection)}[]" for field in columns)
    checked: list[Any] = [meta.get_field(name) for name in conditions]
    where = "".join(f" AND {table}.{quote(field.column)} = %b" for field in checked)
    # Only quoted identifiers and column types from the model are formatted in; every value is a
    # parameter.
    return (
        f"UPDATE {table} SET {assignments} FROM unnest({arrays}) AS v({', '.join(names)}) "  # noqa: S608
        f"WHERE {table}.{names[0]} = v.{names[0]}{where}"
    )


def rows_update(
    model: type[Model],
    objs: Sequence[Model],
    fields: Sequence[str],
    *,
    only_if: Mapping[str, Any] | None = None,
) -> int:
    """Writes `fields` of every object in one statement, only to rows whose fields equal
    `only_if` (a conditional update: a lease still held, say). Returns the rows changed."""
    if not objs:
        return 0
    meta = model._meta
    conditions = tuple(only_if or ())
    sql = _statement(model, tuple(fields), conditions)
    # The connection once, not through django.db.connection's thread-local lookup per value.
    db = connections[DEFAULT_DB_ALIAS]
    columns: list[Any] = [meta.pk, *(meta.get_field(name) for name in fields)]
    params: list[Any] = [[field.get_db_prep_save(getattr(obj, field.attname), db) for obj in objs] for field in columns]
    for name, value in (only_if or {}).items():  # in the order of `conditions`
        field: Any = meta.get_field(name)
        params.append(field.get_db_prep_value(value, db))
    db.ensure_connection()
    # Errors as Django's (IntegrityError, OperationalError...), and a broken connection noticed,
    # as through Django's own cursor.
    with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)
