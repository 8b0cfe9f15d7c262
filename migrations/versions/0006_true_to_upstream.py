"""the database stays true to upstream: wide enough columns, identifiers asked by a job

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 19:00:06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, old length, nullable): columns holding names and values the API chooses,
# which a VARCHAR(n) made PostgreSQL refuse when upstream sent a longer one.
WIDENED = (
    ("outputs", "type", 40, True),
    ("outputs", "altmetric_jid", 40, True),
    ("output_relations", "relation", 20, False),
    ("identifiers", "scheme", 40, False),
    ("source_counts", "source", 60, False),
    ("readers", "platform", 40, False),
    ("score_history", "timeframe", 4, False),
    ("score_context", "scope", 40, False),
    ("score_context", "rank_type", 20, True),
    ("mentions", "source", 60, False),
    ("mentions", "license", 40, True),
    ("mentions", "tweet_id", 30, True),
    ("mentions", "tweeter_id", 30, True),
    ("mentions", "wikipedia_lang", 20, True),
    ("mentions", "country", 10, True),
    ("demographics", "platform", 40, False),
    ("demographics", "dimension", 40, False),
)


def _tables() -> dict[str, list[tuple[str, int, bool]]]:
    tables: dict[str, list[tuple[str, int, bool]]] = {}
    for table, column, length, nullable in WIDENED:
        tables.setdefault(table, []).append((column, length, nullable))
    return tables


def upgrade() -> None:
    # One batch per table: on SQLite each batch copies the table once.
    for table, columns in _tables().items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, length, nullable in columns:
                batch_op.alter_column(column, existing_type=sa.String(length=length), type_=sa.Text(), existing_nullable=nullable)
            if table == "identifiers":
                batch_op.add_column(sa.Column("asked", sa.Boolean(), server_default=sa.false(), nullable=False))
    # A job's asked ids are kept when a later body stops listing them: mark the ones stored so far.
    op.execute(
        "UPDATE identifiers SET asked = TRUE WHERE EXISTS (SELECT 1 FROM job_items j"
        " WHERE j.id_type = identifiers.scheme AND j.identifier = identifiers.value"
        " AND j.altmetric_id = identifiers.altmetric_id AND j.note IS NULL)"
    )


def downgrade() -> None:
    for table, columns in _tables().items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == "identifiers":
                batch_op.drop_column("asked")
            for column, length, nullable in columns:
                # Longer values are cut to fit the old width.
                batch_op.alter_column(
                    column,
                    existing_type=sa.Text(),
                    type_=sa.String(length=length),
                    existing_nullable=nullable,
                    postgresql_using=f"left({column}, {length})",
                )
