"""initial schema: outputs, counts tables, jobs

Revision ID: 0001
Revises:
Create Date: 2026-11-24 10:50:17.036060
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "identifiers",
        sa.Column("scheme", sa.String(length=40), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("altmetric_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scheme", "value", name=op.f("pk_identifiers")),
    )
    with op.batch_alter_table("identifiers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identifiers_altmetric_id"), ["altmetric_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.String(length=20), nullable=False),
        sa.Column("id_type", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("sources", sa.Text(), nullable=True),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("total_items", sa.Integer(), nullable=False),
        sa.Column("rejected_lines", sa.Integer(), nullable=False),
        sa.Column("duplicate_lines", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("resume_after", sa.DateTime(), nullable=True),
        sa.Column("runner", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_table(
        "outputs",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("doi", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("journal", sa.Text(), nullable=True),
        sa.Column("type", sa.String(length=40), nullable=True),
        sa.Column("published_on", sa.DateTime(), nullable=True),
        sa.Column("added_on", sa.DateTime(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("readers_count", sa.Integer(), nullable=True),
        sa.Column("posts_count", sa.Integer(), nullable=True),
        sa.Column("accounts_count", sa.Integer(), nullable=True),
        sa.Column("is_oa", sa.Boolean(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("details_url", sa.Text(), nullable=True),
        sa.Column("altmetric_jid", sa.String(length=40), nullable=True),
        sa.Column("issns", sa.Text(), nullable=True),
        sa.Column("subjects", sa.Text(), nullable=True),
        sa.Column("last_updated", sa.DateTime(), nullable=True),
        sa.Column("harvested_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("altmetric_id", name=op.f("pk_outputs")),
    )
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outputs_doi"), ["doi"], unique=False)

    op.create_table(
        "readers",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("platform", sa.String(length=40), nullable=False),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("altmetric_id", "platform", name=op.f("pk_readers")),
    )
    op.create_table(
        "score_context",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("mean", sa.Float(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("pct", sa.Float(), nullable=True),
        sa.Column("higher_than", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("altmetric_id", "scope", name=op.f("pk_score_context")),
    )
    op.create_table(
        "score_history",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("timeframe", sa.String(length=4), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("altmetric_id", "timeframe", name=op.f("pk_score_history")),
    )
    op.create_table(
        "source_counts",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("source", sa.String(length=60), nullable=False),
        sa.Column("posts_count", sa.Integer(), nullable=True),
        sa.Column("unique_users_count", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("altmetric_id", "source", name=op.f("pk_source_counts")),
    )
    op.create_table(
        "job_items",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("id_type", sa.String(length=40), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False),
        sa.Column("input", sa.Text(), nullable=True),
        sa.Column("line_no", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("altmetric_id", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_items_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "id_type", "identifier", name=op.f("pk_job_items")),
    )
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_items_job_id_status_line_no"), ["job_id", "status", "line_no"], unique=False)

    op.create_table(
        "job_rejects",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("line_no", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("source_line", sa.BigInteger(), nullable=True),
        sa.Column("line", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_rejects_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "line_no", name=op.f("pk_job_rejects")),
    )


def downgrade() -> None:

    op.drop_table("job_rejects")
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_items_job_id_status_line_no"))

    op.drop_table("job_items")
    op.drop_table("source_counts")
    op.drop_table("score_history")
    op.drop_table("score_context")
    op.drop_table("readers")
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outputs_doi"))

    op.drop_table("outputs")
    op.drop_table("jobs")
    with op.batch_alter_table("identifiers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identifiers_altmetric_id"))

    op.drop_table("identifiers")
