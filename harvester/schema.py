"""The SQL schema users query: every table on one MetaData.

This module is the single source of truth for alembic autogenerate. Table and
column names are a public interface (docs/schema.md): add freely, rename never,
and change only through a migration in migrations/versions/.

Timestamps are naive UTC (the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# A naming convention makes constraint names deterministic, which alembic needs
# to alter or drop them later (and SQLite batch mode needs names to work at all).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Altmetric ids passed 2**31 long ago in some id spaces; BigInteger keeps
# PostgreSQL safe (SQLite stores any INTEGER as 64-bit anyway).
AltmetricId = BigInteger

outputs = Table(
    "outputs",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("doi", Text, index=True, doc="lower-cased DOI, as the API returned it"),
    Column("title", Text),
    Column("journal", Text),
    Column("type", String(40), doc="article, news, book, chapter, dataset ..."),
    Column("published_on", DateTime),
    Column("added_on", DateTime, doc="when Altmetric first saw the output"),
    Column("score", Float),
    Column("readers_count", Integer),
    Column("posts_count", Integer, doc="cited_by_posts_count"),
    Column("accounts_count", Integer, doc="cited_by_accounts_count"),
    Column("is_oa", Boolean),
    Column("url", Text),
    Column("details_url", Text),
    Column("altmetric_jid", String(40), doc="Altmetric's journal id"),
    Column("issns", Text, doc="JSON array"),
    Column("subjects", Text, doc="JSON array"),
    Column("last_updated", DateTime, doc="the API's last_updated"),
    Column("harvested_at", DateTime, nullable=False, doc="when we last stored it"),
    # From Fetch's `citation` only (NULL until a Fetch harvest):
    Column("publisher", Text),
    Column("authors", Text, doc="JSON array"),
    Column("abstract", Text),
    Column("last_mentioned_on", DateTime),
    Column("book_title", Text, doc="a chapter's book"),
    Column("book_isbns", Text, doc="a chapter's book's ISBNs, JSON array"),
    Column("posts_seen_at", DateTime, doc="the last Fetch harvest that listed all posts (no source or section filter)"),
    Column("first_harvested_at", DateTime, doc="when we first stored it (kept by every later harvest)"),
    # The nightly picks outputs whose last harvest is older than refresh_after.
    Index(None, "harvested_at"),
)

output_relations = Table(
    "output_relations",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("related_altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("relation", String(20), primary_key=True, doc="chapter (a book's chapters), aggregated_in (a chapter's book)"),
    Column("title", Text),
    Column("ordinal_number", Integer),
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("scheme", String(40), primary_key=True, doc="doi, pmid, arxiv, isbn, handle ..."),
    Column("value", Text, primary_key=True, doc="DOIs lower-cased"),
    Column("altmetric_id", AltmetricId, nullable=False, index=True),
)

source_counts = Table(
    "source_counts",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("source", String(60), primary_key=True),
    Column("posts_count", Integer, doc="posts (fetch); NULL when only counts was harvested"),
    Column("unique_users_count", Integer, doc="accounts: counts' cited_by_*_count"),
)

readers = Table(
    "readers",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("platform", String(40), primary_key=True),
    Column("count", Integer, doc="NULL where the API sent a negative (unknown) value"),
)

score_history = Table(
    "score_history",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("timeframe", String(4), primary_key=True, doc="1d 2d 3d 4d 5d 6d 1w 1m 3m 6m 1y at"),
    Column("score", Float),
)

score_context = Table(
    "score_context",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("scope", String(40), primary_key=True, doc="all, journal, similar_age_3m, similar_age_journal_3m"),
    Column("count", Integer),
    Column("mean", Float),
    Column("rank", Integer),
    Column("pct", Float),
    Column("higher_than", Integer),
    # From Fetch only:
    Column("sample_size", Integer),
    Column("percentile", Float),
    Column("rank_type", String(20)),
)

mentions = Table(
    "mentions",
    metadata,
    Column("mention_id", BigInteger, primary_key=True, autoincrement=False, doc="stable: a hash of the unique key"),
    Column("altmetric_id", AltmetricId, nullable=False),
    Column("source", String(60), nullable=False, doc="same names as source_counts"),
    Column("post_key", Text, nullable=False, doc="tweet id, else url, else a hash of the post"),
    Column("url", Text),
    Column("title", Text),
    Column("summary", Text),
    Column("posted_on", DateTime),
    Column("license", String(40)),
    Column("author_name", Text),
    Column("author_url", Text),
    Column("author_id_on_source", Text),
    Column("author_followers", Integer),
    Column("tweet_id", String(30), doc="tweets only; no tweet text is stored"),
    Column("tweeter_id", String(30)),
    Column("wikipedia_lang", String(20)),
    Column("policy_source", Text, doc="policy documents: the publishing body"),
    Column("country", String(10), doc="policy: the source's country; others: the author's"),
    Column("video_embed_id", Text),
    Column("subreddit", Text),
    Column("first_seen_at", DateTime, nullable=False),
    Column("last_seen_at", DateTime, nullable=False, doc="older than the output's harvested_at: gone upstream"),
    UniqueConstraint("altmetric_id", "source", "post_key"),
    Index(None, "source", "posted_on"),
)

mention_citations = Table(
    "mention_citations",
    metadata,
    Column("mention_id", BigInteger, primary_key=True, autoincrement=False),
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False, doc="an output the post cites"),
    Index(None, "altmetric_id"),
)

demographics = Table(
    "demographics",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("platform", String(40), primary_key=True, doc="twitter, mendeley ..."),
    Column("dimension", String(40), primary_key=True, doc="poster_type, cohort, status, discipline, country"),
    Column("key", Text, primary_key=True),
    Column("value", Integer),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text),
    Column("endpoint", String(20), nullable=False),
    Column("id_type", String(40), nullable=False),
    Column(
        "status",
        String(20),
        nullable=False,
        doc="pending running interrupted paused stopped finished",
    ),
    Column("sources", Text, doc="JSON array of the input files ('-' is stdin)"),
    Column("params", Text, doc="JSON of run options; never holds the API key"),
    Column("total_items", Integer, nullable=False, default=0),
    Column("rejected_lines", Integer, nullable=False, default=0),
    Column("duplicate_lines", Integer, nullable=False, default=0),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime),
    Column("finished_at", DateTime),
    Column("last_error", Text),
    Column("resume_after", DateTime, doc="a paused job's quota resets then"),
    Column("runner", String(200), doc="host:pid:nonce of the process running it"),
    Column("heartbeat_at", DateTime),
    # Set only while a job must be the only one of its kind (an unfinished nightly):
    # the unique constraint, not a pid file, is what refuses a second one.
    Column("lock_name", String(40), unique=True, doc="'nightly' while a nightly is unfinished, else NULL"),
)

job_items = Table(
    "job_items",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("id_type", String(40), primary_key=True),
    Column("identifier", Text, primary_key=True, doc="normalized id; DOIs lower-cased"),
    Column("input", Text, doc="the id exactly as the input line gave it"),
    Column("line_no", BigInteger, nullable=False, doc="position in the input (all sources)"),
    Column("status", String(12), nullable=False, doc="pending done not_found failed"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("http_status", Integer),
    Column("last_error", Text),
    Column("altmetric_id", AltmetricId),
    Column("note", Text, doc="e.g. the API returned another DOI than the one asked"),
    Column("claimed_by", String(200), doc="lease: the runner working on it"),
    Column("lease_until", DateTime),
    Column("updated_at", DateTime, nullable=False),
    Index(None, "job_id", "status", "line_no"),
)

job_rejects = Table(
    "job_rejects",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("line_no", BigInteger, primary_key=True, autoincrement=False, doc="counted across all sources"),
    Column("source", Text, doc="the file ('-' is stdin)"),
    Column("source_line", BigInteger, doc="line number within that file"),
    Column("line", Text),
    Column("reason", Text, nullable=False),
)

citation_activity = Table(
    "citation_activity",
    metadata,
    Column("timeframe", String(4), primary_key=True, doc="at 1d 2d 3d 4d 5d 6d 1w 1m 3m 6m 1y"),
    Column("harvested_on", Date, primary_key=True, doc="UTC day of the harvest"),
    # Part of the key: two queries with different filters on one day must not overwrite each other's ranks.
    Column("filters", Text, primary_key=True, doc="the query's filters, e.g. 'doi_prefix=10.1038&order_by=score'; '' when none"),
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("rank", Integer, nullable=False, doc="1 = first result of page 1"),
    Column("score", Float, doc="the score the listing gave"),
    Column("page", Integer, nullable=False),
    Column("total", Integer, doc="query.total the page reported"),
    Column("job_id", Integer, doc="the citations job"),
    Column("harvested_at", DateTime, nullable=False),
    Index(None, "altmetric_id"),
)

counts_snapshots = Table(
    "counts_snapshots",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("harvested_on", Date, primary_key=True, doc="UTC day; a second harvest that day updates the row"),
    Column("score", Float),
    Column("posts_count", Integer),
    Column("accounts_count", Integer),
    Column("readers_count", Integer),
    Column("harvested_at", DateTime, nullable=False, doc="the harvest the row holds (the day's last)"),
    Index(None, "harvested_on"),
)

nightly_runs = Table(
    "nightly_runs",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, doc="the nightly's row in jobs"),
    Column("night", Date, nullable=False, doc="UTC day the nightly started"),
    Column("timeframe", String(4), nullable=False),
    Column("filters", Text, nullable=False),
    Column("endpoint", String(20), nullable=False, doc="what refreshed the outputs: counts or fetch"),
    Column("discovery_job_id", Integer),
    Column("refresh_job_id", Integer),
    Column("discovered", Integer, nullable=False, doc="outputs the citations endpoint listed"),
    Column("new_outputs", Integer, nullable=False, doc="outputs first stored by this nightly"),
    Column("refreshed", Integer, nullable=False, doc="outputs stored before and harvested again"),
    Column("not_found", Integer, nullable=False),
    Column("failed", Integer, nullable=False, doc="refresh items and citations pages that failed"),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime, nullable=False),
)

nightly_movers = Table(
    "nightly_movers",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("rank", Integer, primary_key=True, autoincrement=False, doc="1 = the biggest change"),
    Column("altmetric_id", AltmetricId, nullable=False),
    Column("doi", Text),
    Column("title", Text),
    Column("previous_on", Date, nullable=False, doc="the snapshot compared against"),
    Column("previous_score", Float),
    Column("harvested_on", Date, nullable=False),
    Column("score", Float),
    Column("change", Float, nullable=False, doc="score - previous_score"),
)
