"""citations activity, daily snapshots, nightly runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 16:10:59.616598
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "citation_activity",
        sa.Column("timeframe", sa.String(length=4), nullable=False),
        sa.Column("harvested_on", sa.Date(), nullable=False),
        sa.Column("filters", sa.Text(), nullable=False),
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("harvested_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("timeframe", "harvested_on", "filters", "altmetric_id", name=op.f("pk_citation_activity")),
    )
    with op.batch_alter_table("citation_activity", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_citation_activity_altmetric_id"), ["altmetric_id"], unique=False)

    op.create_table(
        "counts_snapshots",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("harvested_on", sa.Date(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("posts_count", sa.Integer(), nullable=True),
        sa.Column("accounts_count", sa.Integer(), nullable=True),
        sa.Column("readers_count", sa.Integer(), nullable=True),
        sa.Column("harvested_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("altmetric_id", "harvested_on", name=op.f("pk_counts_snapshots")),
    )
    with op.batch_alter_table("counts_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_counts_snapshots_harvested_on"), ["harvested_on"], unique=False)

    op.create_table(
        "nightly_movers",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("altmetric_id", sa.BigInteger(), nullable=False),
        sa.Column("doi", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("previous_on", sa.Date(), nullable=False),
        sa.Column("previous_score", sa.Float(), nullable=True),
        sa.Column("harvested_on", sa.Date(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("change", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_nightly_movers_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "rank", name=op.f("pk_nightly_movers")),
    )
    op.create_table(
        "nightly_runs",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("night", sa.Date(), nullable=False),
        sa.Column("timeframe", sa.String(length=4), nullable=False),
        sa.Column("filters", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.String(length=20), nullable=False),
        sa.Column("discovery_job_id", sa.Integer(), nullable=True),
        sa.Column("refresh_job_id", sa.Integer(), nullable=True),
        sa.Column("discovered", sa.Integer(), nullable=False),
        sa.Column("new_outputs", sa.Integer(), nullable=False),
        sa.Column("refreshed", sa.Integer(), nullable=False),
        sa.Column("not_found", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_nightly_runs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_nightly_runs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lock_name", sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_jobs_lock_name"), ["lock_name"])

    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_harvested_at", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_outputs_harvested_at"), ["harvested_at"], unique=False)

    # Outputs stored before this revision were first stored no later than their last harvest,
    # and that harvest is the first point of their time series.
    op.execute("UPDATE outputs SET first_harvested_at = harvested_at")
    day = "date(harvested_at)" if op.get_bind().dialect.name == "sqlite" else "CAST(harvested_at AS DATE)"
    op.execute(
        "INSERT INTO counts_snapshots (altmetric_id, harvested_on, score, posts_count, accounts_count, readers_count, harvested_at) "
        f"SELECT altmetric_id, {day}, score, posts_count, accounts_count, readers_count, harvested_at FROM outputs"
    )


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outputs_harvested_at"))
        batch_op.drop_column("first_harvested_at")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_jobs_lock_name"), type_="unique")
        batch_op.drop_column("lock_name")

    op.drop_table("nightly_runs")
    op.drop_table("nightly_movers")
    with op.batch_alter_table("counts_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_counts_snapshots_harvested_on"))

    op.drop_table("counts_snapshots")
    with op.batch_alter_table("citation_activity", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_citation_activity_altmetric_id"))

    op.drop_table("citation_activity")
