"""one key, many processes: the shared rate budget, workers, partial index of leased items

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_budgets",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("next_slot_at", sa.DateTime(), nullable=True),
        sa.Column("hour_start", sa.DateTime(), nullable=True),
        sa.Column("hour_used", sa.Integer(), nullable=False),
        sa.Column("day_start", sa.Date(), nullable=True),
        sa.Column("day_used", sa.Integer(), nullable=False),
        sa.Column("hour_limit", sa.Integer(), nullable=True),
        sa.Column("day_limit", sa.Integer(), nullable=True),
        sa.Column("paused_until", sa.DateTime(), nullable=True),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("quota_until", sa.DateTime(), nullable=True),
        sa.Column("quota_kind", sa.String(length=20), nullable=True),
        sa.Column("rate_factor", sa.Float(), nullable=False),
        sa.Column("rate_changed_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_rate_budgets")),
    )
    op.create_table(
        "workers",
        sa.Column("runner", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("command", sa.String(length=40), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("items_done", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("leases", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("runner", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_job_items_claimed_by",
            ["claimed_by"],
            unique=False,
            sqlite_where=sa.text("claimed_by IS NOT NULL"),
            postgresql_where=sa.text("claimed_by IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_job_items_claimed_by", sqlite_where=sa.text("claimed_by IS NOT NULL"), postgresql_where=sa.text("claimed_by IS NOT NULL")
        )
    op.drop_table("workers")
    op.drop_table("rate_budgets")
