"""Render the store's migrations as plain DDL per database (`make sql` writes sql/*.sql)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

DIALECT_URLS = {
    "postgresql": "postgresql+psycopg://nightshift@localhost/nightshift",
    "sqlite": "sqlite:///nightshift.db",
}


def render_ddl(dialect: str) -> str:
    """The SQL that `nightshift db upgrade` runs on an empty database of this dialect."""
    from alembic import command
    from alembic.config import Config

    buf = io.StringIO()
    cfg = Config(output_buffer=buf)
    cfg.set_main_option("script_location", "nightshift.db:migrations")
    cfg.set_main_option("sqlalchemy.url", DIALECT_URLS[dialect])
    command.upgrade(cfg, "head", sql=True)
    header = f"-- nightshift store schema for {dialect}: generated from the migrations by `make sql`; do not edit.\n"
    return header + buf.getvalue()


def write_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dialect in DIALECT_URLS:
        path = folder / f"schema.{dialect}.sql"
        path.write_text(render_ddl(dialect))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "sql")):
        print(f"wrote {p}")
