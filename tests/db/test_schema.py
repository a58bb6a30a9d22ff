"""One schema source: the MetaData in nightshift.db.schema matches what the migrations build, on both stores."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa


def _diffs(url: str) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from nightshift.db import Store
    from nightshift.db.schema import metadata

    store = Store(url)
    try:
        with store.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            return list(compare_metadata(ctx, metadata))
    finally:
        store.dispose()


def _primary_keys(url: str) -> dict[str, list[str]]:
    from nightshift.db import Store
    from nightshift.db.schema import metadata

    store = Store(url)
    try:
        with store.connect() as conn:
            inspector = sa.inspect(conn)
            return {t: inspector.get_pk_constraint(t)["constrained_columns"] for t in metadata.tables}
    finally:
        store.dispose()


def test_the_metadata_matches_the_migrated_schema(store_url: str) -> None:
    assert _diffs(store_url) == []


def test_every_primary_key_has_the_migrations_column_order(store_url: str) -> None:
    from nightshift.db.schema import metadata, primary_key_columns

    dialect = sa.engine.make_url(store_url).get_backend_name()
    expected = {name: list(primary_key_columns(table, dialect)) for name, table in metadata.tables.items()}
    assert _primary_keys(store_url) == expected


def test_the_predictions_key_differs_by_store_as_documented() -> None:
    from nightshift.db.schema import predictions, primary_key_columns

    # PostgreSQL: entity_id first (the index build sorts on abbreviated keys; migration 0005).
    assert primary_key_columns(predictions, "postgresql") == ("entity_id", "run_id")
    # SQLite: the table is clustered on its key; run_id first keeps a run's rows together.
    assert primary_key_columns(predictions, "sqlite") == ("run_id", "entity_id")


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_readable_ddl_in_sql_is_what_the_migrations_render(dialect: str) -> None:
    from pathlib import Path

    from nightshift.db.sqlgen import render_ddl

    path = Path(__file__).parents[2] / "sql" / f"schema.{dialect}.sql"
    assert path.read_text() == render_ddl(dialect), f"{path} is stale: run `make sql`"
