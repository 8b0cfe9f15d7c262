"""API bodies -> table rows. Pure functions: no I/O, no database, no clock.

Real bodies are messy (DESIGN.md section 1): numbers arrive as strings, zero
counts are left out, sections are null or [], unknown sources appear. Every
function here tolerates all of that and never drops an unknown source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# counts' cited_by_<name>_count -> our source name (one vocabulary with fetch's
# `counts` keys, see FETCH_SOURCES). Unknown names are kept as they are.
COUNTS_SOURCES = {
    "tweeters": "twitter",
    "fbwalls": "facebook",
    "feeds": "blogs",
    "msm": "news",
    "policies": "policy",
    "rdts": "reddit",
    "wikipedia": "wikipedia",
    "gplus": "googleplus",
    "videos": "video",
    "qna": "qna",
    "peer_review_sites": "peer_reviews",
    "forums": "forums",
    "weibo": "weibo",
    "linkedin": "linkedin",
    "pinners": "pinterest",
    "rh": "research_highlights",
    "f1000": "f1000",
    "delicious": "delicious",
    "patents": "patents",
    "syllabi": "syllabi",
    "bluesky": "bluesky",
    "guidelines": "guidelines",
    "book_reviews": "book_reviews",
    "podcasts": "podcasts",
}
# fetch's counts/posts keys that differ from our names.
FETCH_SOURCES = {"q&a": "qna", "patent": "patents", "research_highlight": "research_highlights"}
# Totals, not sources: they go to outputs.posts_count / accounts_count.
_COUNTS_TOTALS = {"posts", "accounts"}
# fetch's context scopes -> counts' names, so both endpoints fill the same rows.
SCOPES = {"this_journal": "journal", "similar_age_this_journal_3m": "similar_age_journal_3m"}
TIMEFRAMES = ("1d", "2d", "3d", "4d", "5d", "6d", "1w", "1m", "3m", "6m", "1y", "at")
# Body keys holding identifiers of the output -> identifiers.scheme.
_ID_KEYS = {
    "pmid": "pmid",
    "pmc": "pmc",
    "arxiv_id": "arxiv",
    "ads_id": "ads",
    "nct_id": "nct_id",
    "ssrn": "ssrn",
    "repec": "repec",
    "urn": "urn",
    "uri": "uri",
    "dimensions_publication_id": "dimensions_publication_id",
}
_ID_LIST_KEYS = {"handles": "handle", "isbns": "isbn"}


class ParseError(ValueError):
    """A 200 body that is not usable JSON of the expected shape; str() says why."""


@dataclass
class Records:
    """The rows one counts body gives, per table."""

    altmetric_id: int
    doi: str | None
    outputs: dict[str, Any]
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    source_counts: list[dict[str, Any]] = field(default_factory=list)
    readers: list[dict[str, Any]] = field(default_factory=list)
    score_history: list[dict[str, Any]] = field(default_factory=list)
    score_context: list[dict[str, Any]] = field(default_factory=list)


def decode(raw: bytes) -> dict[str, Any]:
    """Parse a body that must be a JSON object (truncated bodies and HTML pages fail here)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        start = raw[:60].decode("utf-8", "replace").strip()
        raise ParseError(f"not JSON ({e.msg if isinstance(e, json.JSONDecodeError) else e}): {start!r}") from None
    if not isinstance(body, dict):
        raise ParseError(f"expected a JSON object, got {type(body).__name__}")
    return body


def as_int(value: Any) -> int | None:
    """Ints, floats and numeric strings ("9", "9.0") -> int; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value.strip()))
        except ValueError:
            return None
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def unix_time(value: Any) -> datetime | None:
    """Counts dates are unix seconds -> naive UTC datetime."""
    seconds = as_float(value)
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _json_list(value: Any) -> str | None:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list) else None


def lower_doi(value: Any) -> str | None:
    doi = _text(value)
    return doi.strip().lower() if doi else None


def parse_counts(body: dict[str, Any], harvested_at: datetime) -> Records:
    """One counts-shaped body (Counts endpoint, or a Citations result) -> rows."""
    altmetric_id = as_int(body.get("altmetric_id"))
    if altmetric_id is None:
        raise ParseError("the body has no altmetric_id")
    doi = lower_doi(body.get("doi"))
    output = {
        "altmetric_id": altmetric_id,
        "doi": doi,
        "title": _text(body.get("title")),
        "journal": _text(body.get("journal")),
        "type": _text(body.get("type")),
        "published_on": unix_time(body.get("published_on")),
        "added_on": unix_time(body.get("added_on")),
        "score": as_float(body.get("score")),
        "readers_count": as_int(body.get("readers_count")),
        "posts_count": as_int(body.get("cited_by_posts_count")),
        "accounts_count": as_int(body.get("cited_by_accounts_count")),
        "is_oa": body["is_oa"] if isinstance(body.get("is_oa"), bool) else None,
        "url": _text(body.get("url")),
        "details_url": _text(body.get("details_url")),
        "altmetric_jid": _text(body.get("altmetric_jid")),
        "issns": _json_list(body.get("issns")),
        "subjects": _json_list(body.get("subjects")),
        "last_updated": unix_time(body.get("last_updated")),
        "harvested_at": harvested_at,
    }
    records = Records(altmetric_id, doi, output)
    records.identifiers = identifier_rows(body, altmetric_id)
    for key, value in body.items():
        if key.startswith("cited_by_") and key.endswith("_count"):
            name = key[len("cited_by_") : -len("_count")]
            count = as_int(value)
            if name in _COUNTS_TOTALS or count is None:
                continue
            records.source_counts.append(
                {"altmetric_id": altmetric_id, "source": COUNTS_SOURCES.get(name, name), "unique_users_count": count}
            )
    records.readers = reader_rows(body.get("readers"), altmetric_id)
    records.score_history = history_rows(body.get("history"), altmetric_id)
    context = body.get("context")
    if isinstance(context, dict):
        for scope, values in context.items():
            if isinstance(values, dict):
                records.score_context.append(
                    {
                        "altmetric_id": altmetric_id,
                        "scope": SCOPES.get(scope, scope),
                        "count": as_int(values.get("count")),
                        "mean": as_float(values.get("mean")),
                        "rank": as_int(values.get("rank")),
                        "pct": as_float(values.get("pct")),
                        "higher_than": as_int(values.get("higher_than")),
                    }
                )
    return records


def identifier_rows(body: dict[str, Any], altmetric_id: int) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(scheme: str, value: Any) -> None:
        text = _text(value) if not isinstance(value, int) else str(value)
        if text:
            text = text.strip().lower() if scheme == "doi" else text.strip()
            rows[(scheme, text)] = {"scheme": scheme, "value": text, "altmetric_id": altmetric_id}

    add("doi", body.get("doi"))
    for key, scheme in _ID_KEYS.items():
        add(scheme, body.get(key))
    for key, scheme in _ID_LIST_KEYS.items():
        values = body.get(key)
        if isinstance(values, list):
            for value in values:
                add(scheme, value)
    return list(rows.values())


def reader_rows(readers: Any, altmetric_id: int) -> list[dict[str, Any]]:
    if not isinstance(readers, dict):
        return []
    rows = []
    for platform, value in readers.items():
        count = as_int(value)
        # The API sends -1 for "not known" (docs example); NULL says that in SQL.
        rows.append({"altmetric_id": altmetric_id, "platform": platform, "count": None if count is None or count < 0 else count})
    return rows


def history_rows(history: Any, altmetric_id: int) -> list[dict[str, Any]]:
    if not isinstance(history, dict):
        return []
    return [
        {"altmetric_id": altmetric_id, "timeframe": timeframe, "score": as_float(score)}
        for timeframe, score in history.items()
        if isinstance(timeframe, str)
    ]
