"""views: output_summary (one row per current output), score_changes (the daily time series with its changes)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 22:40:00

The SQL is written out here, not imported, so that this revision stays what it was
when later ones change the views (a later revision drops and re-creates them).

On SQLite, a batch migration that copies a table a view reads (outputs,
source_counts, readers, score_context, counts_snapshots) fails at its
`ALTER TABLE ... RENAME` while the view exists: such a later revision must drop
the views first and create them again afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sources with a column of their own in output_summary: every name of the mapping in
# docs/schema.md (`source_counts`). A source outside it is still in source_counts.
SUMMARY_SOURCES = (
    "twitter",
    "news",
    "blogs",
    "policy",
    "wikipedia",
    "patents",
    "reddit",
    "facebook",
    "video",
    "bluesky",
    "peer_reviews",
    "qna",
    "forums",
    "weibo",
    "linkedin",
    "pinterest",
    "research_highlights",
    "f1000",
    "googleplus",
    "syllabi",
    "guidelines",
    "book_reviews",
    "podcasts",
    "delicious",
)


def output_summary_sql() -> str:
    per_source = ",\n".join(
        f"        SUM(CASE WHEN source = '{s}' THEN unique_users_count END) AS {s}_accounts,\n"
        f"        SUM(CASE WHEN source = '{s}' THEN posts_count END) AS {s}_posts"
        for s in SUMMARY_SOURCES
    )
    columns = ",\n".join(
        f"    COALESCE(s.{s}_accounts, 0) AS {s}_accounts,\n    COALESCE(s.{s}_posts, 0) AS {s}_posts" for s in SUMMARY_SOURCES
    )
    # A missing readers row means zero; a row whose count is NULL (the API sent -1) stays unknown.
    return f"""CREATE VIEW output_summary AS
SELECT
    o.altmetric_id,
    o.doi,
    o.title,
    o.journal,
    o.type,
    o.published_on,
    o.score,
    COALESCE(o.posts_count, 0) AS posts_count,
    COALESCE(o.accounts_count, 0) AS accounts_count,
    COALESCE(o.readers_count, 0) AS readers_count,
{columns},
    CASE WHEN r.altmetric_id IS NULL THEN 0 ELSE r.count END AS mendeley_readers,
    c.pct AS journal_percentile,
    c.rank AS journal_rank,
    c.count AS journal_outputs,
    o.first_harvested_at,
    o.harvested_at AS last_harvested_at
FROM outputs o
LEFT JOIN (
    SELECT altmetric_id,
{per_source}
    FROM source_counts
    GROUP BY altmetric_id
) s ON s.altmetric_id = o.altmetric_id
LEFT JOIN readers r ON r.altmetric_id = o.altmetric_id AND r.platform = 'mendeley'
LEFT JOIN score_context c ON c.altmetric_id = o.altmetric_id AND c.scope = 'journal'
WHERE o.superseded_by IS NULL"""


def score_changes_sql(dialect: str) -> str:
    # Date arithmetic is the one thing the two engines spell differently.
    if dialect == "sqlite":
        day_before, week_before = "date(s.harvested_on, '-1 day')", "date(s.harvested_on, '-7 day')"
    else:
        day_before, week_before = "s.harvested_on - 1", "s.harvested_on - 7"
    return f"""CREATE VIEW score_changes AS
SELECT
    s.altmetric_id,
    s.harvested_on,
    s.score,
    s.previous_on,
    s.previous_score,
    s.score - s.previous_score AS change,
    s.score - d1.score AS change_1d,
    s.score - d7.score AS change_7d
FROM (
    SELECT altmetric_id, harvested_on, score,
           LAG(harvested_on) OVER (PARTITION BY altmetric_id ORDER BY harvested_on) AS previous_on,
           LAG(score) OVER (PARTITION BY altmetric_id ORDER BY harvested_on) AS previous_score
    FROM counts_snapshots
) s
LEFT JOIN counts_snapshots d1 ON d1.altmetric_id = s.altmetric_id AND d1.harvested_on = {day_before}
LEFT JOIN counts_snapshots d7 ON d7.altmetric_id = s.altmetric_id AND d7.harvested_on = {week_before}"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(output_summary_sql())
    op.execute(score_changes_sql(dialect))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS score_changes")
    op.execute("DROP VIEW IF EXISTS output_summary")
