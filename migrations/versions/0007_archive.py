"""the raw archive of 200 bodies, which `harvester reparse` reads

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "raw_bodies",
        sa.Column("endpoint", sa.String(length=20), nullable=False),
        sa.Column("id_type", sa.String(length=40), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False),
        sa.Column("harvested_on", sa.Date(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "id_type", "identifier", "harvested_on", name=op.f("pk_raw_bodies")),
    )
    with op.batch_alter_table("raw_bodies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_raw_bodies_fetched_at"), ["fetched_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_raw_bodies_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("raw_bodies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_raw_bodies_job_id"))
        batch_op.drop_index(batch_op.f("ix_raw_bodies_fetched_at"))
    op.drop_table("raw_bodies")
