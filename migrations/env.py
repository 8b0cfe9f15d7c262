"""Alembic environment: uses the caller's connection, else our configured database URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from harvester.schema import metadata

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    # Plain `alembic ...` from a checkout: the same database the harvester would use.
    from harvester.config import load_config
    from harvester.db import make_engine

    engine = config.attributes.get("engine") or make_engine(load_config().database.url)
    with engine.begin() as conn:
        run_on(conn)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_online()
