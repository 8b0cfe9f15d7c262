"""fetch: mentions, demographics, output relations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 11:20:33.635400
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "demographics",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("platform", sa.String(length=40), nullable=False),
        sa.Column("dimension", sa.String(length=40), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("altmetric_id", "platform", "dimension", "key", name=op.f("pk_demographics")),
    )
    op.create_table(
        "mention_citations",
        sa.Column("mention_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("mention_id", "altmetric_id", name=op.f("pk_mention_citations")),
    )
    with op.batch_alter_table("mention_citations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mention_citations_altmetric_id"), ["altmetric_id"], unique=False)

    op.create_table(
        "mentions",
        sa.Column("mention_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("altmetric_id", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=60), nullable=False),
        sa.Column("post_key", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("posted_on", sa.DateTime(), nullable=True),
        sa.Column("license", sa.String(length=40), nullable=True),
        sa.Column("author_name", sa.Text(), nullable=True),
        sa.Column("author_url", sa.Text(), nullable=True),
        sa.Column("author_id_on_source", sa.Text(), nullable=True),
        sa.Column("author_followers", sa.Integer(), nullable=True),
        sa.Column("tweet_id", sa.String(length=30), nullable=True),
        sa.Column("tweeter_id", sa.String(length=30), nullable=True),
        sa.Column("wikipedia_lang", sa.String(length=20), nullable=True),
        sa.Column("policy_source", sa.Text(), nullable=True),
        sa.Column("country", sa.String(length=10), nullable=True),
        sa.Column("video_embed_id", sa.Text(), nullable=True),
        sa.Column("subreddit", sa.Text(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("mention_id", name=op.f("pk_mentions")),
        sa.UniqueConstraint("altmetric_id", "source", "post_key", name=op.f("uq_mentions_altmetric_id_source_post_key")),
    )
    with op.batch_alter_table("mentions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mentions_source_posted_on"), ["source", "posted_on"], unique=False)

    op.create_table(
        "output_relations",
        sa.Column("altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("related_altmetric_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("relation", sa.String(length=20), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("ordinal_number", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("altmetric_id", "related_altmetric_id", "relation", name=op.f("pk_output_relations")),
    )
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("publisher", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("authors", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("abstract", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("last_mentioned_on", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("book_title", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("book_isbns", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("posts_seen_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("score_context", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sample_size", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("percentile", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("rank_type", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("score_context", schema=None) as batch_op:
        batch_op.drop_column("rank_type")
        batch_op.drop_column("percentile")
        batch_op.drop_column("sample_size")

    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_column("posts_seen_at")
        batch_op.drop_column("book_isbns")
        batch_op.drop_column("book_title")
        batch_op.drop_column("last_mentioned_on")
        batch_op.drop_column("abstract")
        batch_op.drop_column("authors")
        batch_op.drop_column("publisher")

    op.drop_table("output_relations")
    with op.batch_alter_table("mentions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mentions_source_posted_on"))

    op.drop_table("mentions")
    with op.batch_alter_table("mention_citations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mention_citations_altmetric_id"))

    op.drop_table("mention_citations")
    op.drop_table("demographics")
