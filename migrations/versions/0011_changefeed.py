"""change feed: nightly_runs' mode, window and completeness, listing_pages, the view daily_series

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 10:00:00

The SQL is written out here, not imported, so that this revision stays what it was
when later ones change the view (see 0009).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_COLUMNS = (
    ("mode", sa.String(10)),
    ("mode_note", sa.Text()),
    ("complete", sa.Boolean()),
    ("window_from", sa.Date()),
    ("listing_job_id", sa.Integer()),
    ("covers_doi_prefix", sa.Text()),
    ("requests", sa.Integer()),
    ("listed", sa.Integer()),
    ("listed_tracked", sa.Integer()),
    ("carried", sa.Integer()),
    ("full_refreshed", sa.Integer()),
)


def daily_series_sql(dialect: str) -> str:
    """One row per output and day, from its first snapshot to the last complete change-feed night.

    A day is observed (a snapshot that day) or carried: carried only when every day since the
    output's last observation lies in the window of a complete change-feed night whose listing
    covers the output (no doi_prefix, or the output's) and did not list it, so nothing changed.
    Any other day is unknown and has no row (an incomplete night's gap). Carried rows stop at the
    last complete night, and a superseded output (merged upstream) is never carried.
    """
    # Date arithmetic and booleans are what the two engines spell differently.
    next_day = "date(c.day, '+1 day')" if dialect == "sqlite" else "c.day + 1"
    complete = "n.complete = 1" if dialect == "sqlite" else "n.complete"
    return f"""CREATE VIEW daily_series AS
WITH RECURSIVE
nights AS (
    SELECT n.listing_job_id, n.window_from, n.night, n.covers_doi_prefix
    FROM nightly_runs n
    WHERE n.mode = 'changes' AND {complete} AND n.window_from IS NOT NULL
),
calendar (day) AS (
    SELECT min(harvested_on) FROM counts_snapshots
    UNION ALL
    SELECT {next_day} FROM calendar c
    WHERE c.day < (SELECT max(d) FROM (SELECT max(harvested_on) AS d FROM counts_snapshots
                                        UNION ALL SELECT max(night) FROM nights) x)
),
tracked AS (
    SELECT altmetric_id, min(harvested_on) AS first_day, max(harvested_on) AS last_observed
    FROM counts_snapshots
    GROUP BY altmetric_id
),
grid AS (
    SELECT t.altmetric_id, c.day, s.harvested_on AS observed_on, o.doi
    FROM tracked t
    JOIN outputs o ON o.altmetric_id = t.altmetric_id
    JOIN calendar c ON c.day >= t.first_day
        AND (c.day <= t.last_observed OR (o.superseded_by IS NULL AND c.day <= (SELECT max(night) FROM nights)))
    LEFT JOIN counts_snapshots s ON s.altmetric_id = t.altmetric_id AND s.harvested_on = c.day
),
flagged AS (
    SELECT g.altmetric_id, g.day, g.observed_on,
           CASE WHEN g.observed_on IS NOT NULL THEN 0
                WHEN EXISTS (
                    SELECT 1 FROM nights n
                    WHERE n.window_from <= g.day AND g.day <= n.night
                      AND (n.covers_doi_prefix IS NULL OR lower(g.doi) LIKE n.covers_doi_prefix || '/%')
                      AND NOT EXISTS (SELECT 1 FROM citation_activity ca
                                      WHERE ca.job_id = n.listing_job_id AND ca.altmetric_id = g.altmetric_id)
                ) THEN 0
                ELSE 1 END AS unknown,
           count(g.observed_on) OVER (PARTITION BY g.altmetric_id ORDER BY g.day) AS since
    FROM grid g
),
runs AS (
    SELECT f.altmetric_id, f.day, f.observed_on,
           sum(f.unknown) OVER (PARTITION BY f.altmetric_id, f.since ORDER BY f.day) AS unknown_so_far,
           min(f.day) OVER (PARTITION BY f.altmetric_id, f.since) AS observed_day
    FROM flagged f
)
SELECT r.altmetric_id, r.day, s.score, s.posts_count, s.accounts_count, s.readers_count,
       r.observed_on IS NOT NULL AS observed
FROM runs r
JOIN counts_snapshots s ON s.altmetric_id = r.altmetric_id AND s.harvested_on = r.observed_day
WHERE r.unknown_so_far = 0"""


def upgrade() -> None:
    for name, type_ in RUN_COLUMNS:
        op.add_column("nightly_runs", sa.Column(name, type_, nullable=True))
    op.create_table(
        "listing_pages",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("page", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.Column("tracked", sa.Integer(), nullable=False),
        sa.Column("harvested_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_listing_pages_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "page", name=op.f("pk_listing_pages")),
    )
    op.execute(daily_series_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS daily_series")
    op.drop_table("listing_pages")
    # Batch mode on SQLite copies nightly_runs: no view reads it once daily_series is gone.
    with op.batch_alter_table("nightly_runs") as batch_op:
        for name, _ in reversed(RUN_COLUMNS):
            batch_op.drop_column(name)
