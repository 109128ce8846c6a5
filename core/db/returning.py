"""One-statement claims: an UPDATE whose changed rows come back as model instances, with a
foreign key's row joined in (issue 20: the worker's claim of a job and its read of the job
and its model were two round trips)."""

from __future__ import annotations

from django.db import connections, transaction
from django.db.models import Model, QuerySet
from django.db.models.sql.subqueries import UpdateQuery


def update_returning_joined(queryset: QuerySet, related: str, **values) -> list[Model] | None:
    """`queryset.update(**values)` that returns the updated rows as instances of the
    queryset's model, after the update, each with its `related` foreign key's row loaded
    (as `select_related(related)` would), in ONE statement:
    `WITH c AS (UPDATE ... RETURNING cols) SELECT c.cols, r.cols FROM c LEFT JOIN <related table> r`.

    The ORM builds the UPDATE (F() expressions, conversions of the written values), and
    the rows come back through the same converters a query applies (JSON, UUID, dates).
    PostgreSQL only (SQLite has no data-modifying WITH): returns None on another
    database, and the caller does the update and the read itself. A related row that
    does not exist (a nullable key) leaves the relation unloaded."""
    db = queryset.db
    connection = connections[db]
    if connection.vendor != "postgresql":
        return None
    model = queryset.model
    key = model._meta.get_field(related)
    target = key.related_model
    fields, target_fields = model._meta.concrete_fields, target._meta.concrete_fields
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(values)
    update_sql, params = query.get_compiler(db).as_sql()
    qn = connection.ops.quote_name
    returning = ", ".join(qn(f.column) for f in fields)
    columns = ", ".join([*(f"c.{qn(f.column)}" for f in fields), *(f"r.{qn(f.column)}" for f in target_fields)])
    sql = (
        f"WITH c AS ({update_sql} RETURNING {returning}) SELECT {columns} FROM c "
        f"LEFT JOIN {qn(target._meta.db_table)} r ON r.{qn(key.target_field.column)} = c.{qn(key.column)}"
    )
    with transaction.mark_for_rollback_on_error(using=db), connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    compiler = model._base_manager.using(db).none().query.get_compiler(db)
    expressions = [f.get_col(model._meta.db_table) for f in fields]
    expressions += [f.get_col(target._meta.db_table) for f in target_fields]
    converters = compiler.get_converters(expressions)
    n = len(fields)
    found = []
    for row in compiler.apply_converters(rows, converters):
        instance = model.from_db(db, [f.attname for f in fields], row[:n])
        if row[n + target_fields.index(target._meta.pk)] is not None:
            key.set_cached_value(instance, target.from_db(db, [f.attname for f in target_fields], row[n:]))
        found.append(instance)
    return found
