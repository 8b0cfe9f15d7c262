"""downloads, downloads_timeline: Fetch's counts.downloads (PMC views, full text, PDF, monthly)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:00:00

Until now the section became a phantom `downloads` row in source_counts with empty
counts. Those rows are deleted here: they were never a source, and the next Fetch
harvest of each output (or `harvester reparse`) fills the new tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "downloads",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("platform", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("altmetric_id", "platform", "metric", name=op.f("pk_downloads")),
    )
    op.create_table(
        "downloads_timeline",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("platform", sa.Text(), nullable=False),
        sa.Column("month", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("altmetric_id", "platform", "month", "metric", name=op.f("pk_downloads_timeline")),
    )
    # The phantom rows the old parser made of the section (no posts, no accounts): never a source.
    op.execute("DELETE FROM source_counts WHERE source = 'downloads' AND posts_count IS NULL AND unique_users_count IS NULL")


def downgrade() -> None:
    op.drop_table("downloads_timeline")
    op.drop_table("downloads")
