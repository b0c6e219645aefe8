"""One UPDATE statement for many rows, each with its own values.

Django's `bulk_update` builds a CASE WHEN per field per row and resolves every expression in
Python: measured here, 1.6 s for 500 rows of four fields, the most expensive part of
dispatching 500 firings. This writes `WITH v(pk, f) AS (VALUES ...) UPDATE t SET f = v.f
FROM v WHERE t.pk = v.pk [AND t.f = ...]` instead, with values prepared by each field, as the ORM would.
Each value is cast to its column type: PostgreSQL would otherwise type a VALUES column from its
first row (a NULL there would be text)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connection
from django.db.models import Model


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
    pk = meta.pk
    assert pk is not None
    columns: list[Any] = [pk, *(meta.get_field(name) for name in fields)]
    row = "(" + ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in columns) + ")"
    values: list[Any] = []
    for obj in objs:
        values.extend(field.get_db_prep_save(getattr(obj, field.attname), connection) for field in columns)
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    names = [quote(field.column) for field in columns]
    assignments = ", ".join(f"{name} = v.{name}" for name in names[1:])
    # Only quoted identifiers and column types from the model are formatted in; every value is a
    # parameter.
    cte = f"WITH v({', '.join(names)}) AS (VALUES {', '.join([row] * len(objs))}) "
    update = f"UPDATE {table} SET {assignments} FROM v WHERE {table}.{names[0]} = v.{names[0]}"  # noqa: S608
    conditions, params = [], []
    for name, value in (only_if or {}).items():
        field: Any = meta.get_field(name)
        conditions.append(f" AND {table}.{quote(field.column)} = %s")
        params.append(field.get_db_prep_value(value, connection))
    with connection.cursor() as cursor:
        cursor.execute(cte + update + "".join(conditions), [*values, *params])
        return int(cursor.rowcount)
