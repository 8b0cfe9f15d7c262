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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
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

# The migration these tables are: every command compares the database's revision with it, and only
# a database behind it loads alembic (~175 ms at each start, and in every writer process, spent for
# nothing). tests/test_migrations.py holds it to alembic's own head: a new migration changes both.
HEAD_REVISION = "0011"

# Altmetric ids passed 2**31 long ago in some id spaces; BigInteger keeps
# PostgreSQL safe (SQLite stores any INTEGER as 64-bit anyway).
AltmetricId = BigInteger
# Names and values the API chooses (sources, platforms, timeframes, scopes, types ...) are Text:
# a VARCHAR(n) made PostgreSQL refuse a whole batch when upstream sent a longer one.
ApiText = Text

outputs = Table(
    "outputs",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("doi", Text, index=True, doc="lower-cased DOI, as the API returned it"),
    Column("title", Text),
    Column("journal", Text),
    Column("type", ApiText, doc="article, news, book, chapter, dataset ..."),
    Column("published_on", DateTime),
    Column("added_on", DateTime, doc="when Altmetric first saw the output"),
    Column("score", Float),
    Column("readers_count", Integer),
    Column("posts_count", Integer, doc="cited_by_posts_count"),
    Column("accounts_count", Integer, doc="cited_by_accounts_count"),
    Column("is_oa", Boolean),
    Column("url", Text),
    Column("details_url", Text),
    Column("altmetric_jid", ApiText, doc="Altmetric's journal id"),
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
    Column("posts_seen_at", DateTime, doc="the last Fetch harvest that listed all posts and made mentions equal to them"),
    Column("first_harvested_at", DateTime, doc="when we first stored it (kept by every later harvest)"),
    Column("superseded_by", AltmetricId, doc="the output that replaced this one upstream (records merged); NULL while current"),
    Column("superseded_at", DateTime, doc="when the harvester saw the change"),
    # The nightly picks outputs whose last harvest is older than refresh_after.
    Index(None, "harvested_at"),
)

output_relations = Table(
    "output_relations",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("related_altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("relation", ApiText, primary_key=True, doc="chapter (a book's chapters), aggregated_in (a chapter's book)"),
    Column("title", Text),
    Column("ordinal_number", Integer),
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("scheme", ApiText, primary_key=True, doc="doi, pmid, arxiv, isbn, handle ..."),
    Column("value", Text, primary_key=True, doc="DOIs lower-cased"),
    Column("altmetric_id", AltmetricId, nullable=False, index=True),
    # A later body that no longer lists the id a job asked by does not delete it.
    Column("asked", Boolean, nullable=False, server_default=false(), doc="a harvest asked the API by this id"),
)

source_counts = Table(
    "source_counts",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("source", ApiText, primary_key=True),
    Column("posts_count", Integer, doc="posts (fetch); NULL when only counts was harvested"),
    Column("unique_users_count", Integer, doc="accounts: counts' cited_by_*_count"),
)

readers = Table(
    "readers",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("platform", ApiText, primary_key=True),
    Column("count", Integer, doc="NULL where the API sent a negative (unknown) value"),
)

score_history = Table(
    "score_history",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("timeframe", ApiText, primary_key=True, doc="1d 2d 3d 4d 5d 6d 1w 1m 3m 6m 1y at"),
    Column("score", Float),
)

score_context = Table(
    "score_context",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("scope", ApiText, primary_key=True, doc="all, journal, similar_age_3m, similar_age_journal_3m"),
    Column("count", Integer),
    Column("mean", Float),
    Column("rank", Integer),
    Column("pct", Float),
    Column("higher_than", Integer),
    # From Fetch only:
    Column("sample_size", Integer),
    Column("percentile", Float),
    Column("rank_type", ApiText),
)

mentions = Table(
    "mentions",
    metadata,
    Column("mention_id", BigInteger, primary_key=True, autoincrement=False, doc="stable: a hash of the unique key"),
    Column("altmetric_id", AltmetricId, nullable=False),
    Column("source", ApiText, nullable=False, doc="same names as source_counts"),
    Column("post_key", Text, nullable=False, doc="tweet id, else url, else a hash of the post"),
    Column("url", Text),
    Column("title", Text),
    Column("summary", Text),
    Column("posted_on", DateTime),
    Column("license", ApiText),
    Column("author_name", Text),
    Column("author_url", Text),
    Column("author_id_on_source", Text),
    Column("author_followers", Integer),
    Column("tweet_id", ApiText, doc="tweets only; no tweet text is stored"),
    Column("tweeter_id", ApiText),
    Column("wikipedia_lang", ApiText),
    Column("policy_source", Text, doc="policy documents: the publishing body"),
    Column("country", ApiText, doc="policy: the source's country; others: the author's"),
    Column("video_embed_id", Text),
    Column("subreddit", Text),
    Column("first_seen_at", DateTime, nullable=False),
    Column("last_seen_at", DateTime, nullable=False, doc="the last harvest whose body listed the post"),
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
    Column("platform", ApiText, primary_key=True, doc="twitter, mendeley ..."),
    Column("dimension", ApiText, primary_key=True, doc="poster_type, cohort, status, discipline, country"),
    Column("key", Text, primary_key=True),
    Column("value", Integer),
)

# Fetch's counts.downloads: views and downloads where Altmetric has them (PubMed Central,
# some publishers). Not sources: a source_counts row is only ever a source of attention.
downloads = Table(
    "downloads",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("platform", ApiText, primary_key=True, doc="pmc (PubMed Central), publisher ..."),
    Column("metric", ApiText, primary_key=True, doc="unique_ips, full_text, pdf, abstract ..."),
    Column("count", BigInteger, nullable=False, doc="the total since the platform's logs began"),
)

downloads_timeline = Table(
    "downloads_timeline",
    metadata,
    Column("altmetric_id", AltmetricId, primary_key=True, autoincrement=False),
    Column("platform", ApiText, primary_key=True, doc="as in downloads"),
    Column("month", ApiText, primary_key=True, doc="'YYYY-MM', as the API names it"),
    Column("metric", ApiText, primary_key=True, doc="unique_ips (what the API's timeline counts)"),
    Column("count", BigInteger, nullable=False),
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
    Column("claimed_by", String(200), doc="lease: the worker (workers.runner) working on it"),
    Column("lease_until", DateTime, doc="the lease ends then (the database server's clock); renewed while the work goes on"),
    Column("updated_at", DateTime, nullable=False),
    Index(None, "job_id", "status", "line_no"),
    # Leases are renewed and released by worker: a partial index holds only the items leased right now.
    Index(
        "ix_job_items_claimed_by",
        "claimed_by",
        sqlite_where=text("claimed_by IS NOT NULL"),
        postgresql_where=text("claimed_by IS NOT NULL"),
    ),
    # The nightly's 404 schedule looks ids up by (id_type, identifier) among the 404s only: a
    # partial index stays as small as the 404s, costs nothing when a job is loaded (its items
    # are pending), and answers both its NOT EXISTS and its list of old 404s from the index.
    Index(
        "ix_job_items_not_found",
        "id_type",
        "identifier",
        "updated_at",
        sqlite_where=text("status = 'not_found'"),
        postgresql_where=text("status = 'not_found'"),
    ),
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
    # Added in 0011 for the change feed (docs/nightly.md); NULL on rows of older nightlies.
    Column("mode", String(10), doc="refresh or changes: how the night ran (refresh when changes fell back)"),
    Column("mode_note", Text, doc="why the night ran in another mode than configured, or why it is incomplete"),
    Column("complete", Boolean, doc="changes: the listing was read whole, so unlisted outputs are carried (daily_series)"),
    Column("window_from", Date, doc="changes: the first day the listing's timeframe covers (the last is night)"),
    Column("listing_job_id", Integer, doc="changes: the citations job of the night's listing"),
    Column("covers_doi_prefix", Text, doc="changes: the doi_prefix filter of the listing; NULL: every output"),
    Column("requests", Integer, doc="changes: HTTP requests the night spent"),
    Column("listed", Integer, doc="changes: outputs the listing held (query.total), tracked or not"),
    Column("listed_tracked", Integer, doc="changes: listed outputs that are tracked, stored from their entry"),
    Column("carried", Integer, doc="changes: tracked outputs carried forward without a request"),
    Column("full_refreshed", Integer, doc="changes: outputs asked again by the full refresh"),
)

# The pages of change-feed listings: their query.total tells whether the listing held still while it was read.
listing_pages = Table(
    "listing_pages",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, doc="the citations job"),
    Column("page", Integer, primary_key=True, autoincrement=False),
    Column("total", Integer, doc="query.total the page reported"),
    Column("results", Integer, nullable=False, doc="results on the page"),
    Column("tracked", Integer, nullable=False, doc="of them, outputs the database tracks (stored)"),
    Column("harvested_at", DateTime, nullable=False),
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


rate_budgets = Table(
    "rate_budgets",
    metadata,
    # Every process that uses one key draws from this row, whatever job it runs.
    Column("key_hash", String(64), primary_key=True, doc="a salted hash of the API key (never the key)"),
    Column("next_slot_at", DateTime, doc="the free tier's next request slot: requests are spaced evenly across processes"),
    Column("hour_start", DateTime, doc="the clock hour (UTC) hour_used counts"),
    Column("hour_used", Integer, nullable=False, default=0, doc="requests granted in that hour, by every process"),
    Column("day_start", Date, doc="the UTC day day_used counts"),
    Column("day_used", Integer, nullable=False, default=0, doc="requests granted that day, by every process"),
    Column("hour_limit", Integer, doc="the hourly limit the server announced (X-HourlyRateLimit-Limit), when lower than the configuration"),
    Column("day_limit", Integer, doc="the daily limit the server announced (X-DailyRateLimit-Limit), when lower"),
    Column("paused_until", DateTime, doc="no process sends a request before this (Retry-After, a spent hourly limit)"),
    Column("pause_reason", Text),
    Column("quota_until", DateTime, doc="the daily quota (or Fetch's tweet-id quota) is spent until then: jobs pause"),
    Column("quota_kind", String(20), doc="daily or tweet-id"),
    Column("rate_factor", Float, nullable=False, default=1.0, doc="1 = the configured rate; halved while 429s persist"),
    Column("rate_changed_at", DateTime),
    Column("updated_at", DateTime, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("runner", String(200), primary_key=True, doc="host:pid:nonce, as in job_items.claimed_by"),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("command", String(40), doc="harvest, resume, worker, nightly ..."),
    Column("job_id", Integer, doc="the job it works on now (NULL between jobs)"),
    Column("started_at", DateTime, nullable=False),
    Column("heartbeat_at", DateTime, nullable=False, doc="the database server's clock; older than a minute: gone"),
    Column("items_done", BigInteger, nullable=False, default=0, doc="items it made final since it started"),
    Column("requests", BigInteger, nullable=False, default=0, doc="HTTP attempts since it started"),
    Column("leases", Integer, nullable=False, default=0, doc="items it held at its last heartbeat"),
)

raw_bodies = Table(
    "raw_bodies",
    metadata,
    # What `harvester reparse` rebuilds the data tables from, without a request: a parser fix or a
    # schema migration never costs quota. Written in the transaction that stores the body's data.
    Column("endpoint", String(20), primary_key=True, doc="counts, fetch or citations"),
    Column("id_type", String(40), primary_key=True, doc="as in job_items (doi, pmid ...; 'page' for citations)"),
    Column(
        "identifier",
        Text,
        primary_key=True,
        doc="the id asked, as in job_items; for citations the page's query, e.g. '1w?doi_prefix=10.1038&num_results=99&page=3'",
    ),
    # Part of the key so that [archive] keep = "all" keeps a body a day; with "latest" a
    # newer body replaces the older ones of its endpoint and id, whatever their day.
    Column("harvested_on", Date, primary_key=True, doc="UTC day the body was fetched"),
    Column("fetched_at", DateTime, nullable=False, doc="when the writer stored it: outputs.harvested_at of its data"),
    Column("job_id", Integer, doc="the job that fetched it"),
    Column(
        "params",
        Text,
        doc="JSON: the Fetch options the body was fetched with (a filtered body carries part of its sections), the Citations query; NULL for counts",
    ),
    Column("raw_size", Integer, nullable=False, doc="bytes of the body as the API sent it"),
    Column("body", LargeBinary, nullable=False, doc="the body, zstd-compressed (one frame)"),
    Index(None, "fetched_at"),
    Index(None, "job_id"),
)


output_aliases = Table(
    "output_aliases",
    metadata,
    # Upstream merged records: an identifier that named one altmetric id now names another.
    Column("old_altmetric_id", AltmetricId, primary_key=True, autoincrement=False, doc="the output that was replaced"),
    Column("new_altmetric_id", AltmetricId, nullable=False, index=True, doc="the current output (chains are kept one hop long)"),
    Column("via", Text, doc="the identifier that showed it, e.g. doi:10.1038/x"),
    Column("detected_at", DateTime, nullable=False),
)
