"""nightly selection: NOT EXISTS by (id_type, identifier) needs its index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 19:00:05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_job_items_not_found",
            ["id_type", "identifier", "updated_at"],
            unique=False,
            sqlite_where=sa.text("status = 'not_found'"),
            postgresql_where=sa.text("status = 'not_found'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_job_items_not_found", sqlite_where=sa.text("status = 'not_found'"), postgresql_where=sa.text("status = 'not_found'")
        )
