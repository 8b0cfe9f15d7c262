"""follow altmetric id changes: output_aliases, outputs.superseded_by

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 19:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "output_aliases",
        sa.Column("old_altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("new_altmetric_id", sa.BigInteger(), nullable=False),
        sa.Column("via", sa.Text(), nullable=True),
        sa.Column("detected_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("old_altmetric_id", name=op.f("pk_output_aliases")),
    )
    with op.batch_alter_table("output_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_output_aliases_new_altmetric_id"), ["new_altmetric_id"], unique=False)
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("superseded_by", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("superseded_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_column("superseded_at")
        batch_op.drop_column("superseded_by")
    with op.batch_alter_table("output_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_output_aliases_new_altmetric_id"))
    op.drop_table("output_aliases")
