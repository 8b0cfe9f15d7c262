"""API bodies -> table rows. Pure functions: no I/O, no database, no clock.

Real bodies are messy (the samples in harvester/data): numbers arrive as strings, zero
counts are left out, sections are null or [], unknown sources appear. Every
function here tolerates all of that and never drops an unknown source.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import orjson

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
    # Fetch's citation names the PubMed Central id `pmcid` ("PMC2244806") where Counts says `pmc`.
    "pmcid": "pmc",
    "arxiv_id": "arxiv",
    "ads_id": "ads",
    "nct_id": "nct_id",
    "ssrn": "ssrn",
    "repec": "repec",
    "urn": "urn",
    "uri": "uri",
    "dimensions_publication_id": "dimensions_publication_id",
    # Fetch's citation has a singular `handle` next to (or instead of) `handles`.
    "handle": "handle",
}
_ID_LIST_KEYS = {"handles": "handle", "isbns": "isbn"}


class ParseError(ValueError):
    """A 200 body that is not usable JSON of the expected shape; str() says why."""


_P = ParamSpec("_P")
_R = TypeVar("_R")
# What a body can make Python raise while it is decoded or read: nesting past the recursion
# limit, an integer of more than 4,300 digits, a number too large for a float, a shape no
# branch expected. Not MemoryError or KeyboardInterrupt: those are the process's, not the body's.
_BODY_ERRORS = (RecursionError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError)


def _body_errors(parse: Callable[_P, _R]) -> Callable[_P, _R]:
    """Whatever a body makes the parser raise becomes a ParseError, which fails that item alone.

    Anything else escaped the run (or the writer process) and stopped the job, and every
    `resume` stopped again on the same item (issue 17, item 8).
    """

    @functools.wraps(parse)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return parse(*args, **kwargs)
        except ParseError:
            raise
        except RecursionError:
            raise ParseError("the body is nested too deeply") from None
        except _BODY_ERRORS as e:
            raise ParseError(f"unreadable body ({type(e).__name__}: {str(e)[:200]})") from None

    return guarded


@dataclass
class Records:
    """The rows one body gives, per table (the fetch-only tables stay empty for counts)."""

    altmetric_id: int
    doi: str | None
    outputs: dict[str, Any]
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    source_counts: list[dict[str, Any]] = field(default_factory=list)
    readers: list[dict[str, Any]] = field(default_factory=list)
    score_history: list[dict[str, Any]] = field(default_factory=list)
    score_context: list[dict[str, Any]] = field(default_factory=list)
    # Fetch only:
    output_relations: list[dict[str, Any]] = field(default_factory=list)
    mentions: list[dict[str, Any]] = field(default_factory=list)
    mention_citations: list[dict[str, Any]] = field(default_factory=list)
    demographics: list[dict[str, Any]] = field(default_factory=list)
    downloads: list[dict[str, Any]] = field(default_factory=list)
    downloads_timeline: list[dict[str, Any]] = field(default_factory=list)
    # The tables whose section the body carries whole: the writer makes the output's rows
    # equal to it (a row the body no longer has is deleted). The others are left alone.
    sections: set[str] = field(default_factory=set)
    # The identifier schemes the body lists (doi, pmid, isbn ...): the output's identifiers of
    # these schemes are replaced, the others are left alone.
    id_schemes: set[str] = field(default_factory=set)


# A \u0000 escape in JSON text: not preceded by another backslash (an even run of them is text).
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


@_body_errors
def decode(raw: bytes) -> dict[str, Any]:
    """Parse a body that must be a JSON object (truncated bodies and HTML pages fail here).

    NUL characters are dropped from every string, keys included: PostgreSQL
    refuses them in text, and JSON can only carry them escaped, so removing
    the escape here cleans every text column of every table at once.
    """
    if b"\\u0000" in raw:
        raw = _NUL_ESCAPE.sub(rb"\1", raw)
    try:
        # orjson is several times faster; what it refuses (NaN, ints past 64 bits, lone
        # surrogates, bad UTF-8) goes to the standard parser, which decides as before.
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
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
    if type(value) is int:  # the common case first: this runs for every number of every body
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = as_float(value)
    return None if number is None else int(number)


def as_float(value: Any) -> float | None:
    """Ints, floats and numeric strings -> float; NaN, infinities and anything else -> None.

    json.loads accepts NaN and Infinity; neither is a count or a score.
    """
    if type(value) is float:  # the common case first: this runs for every number of every body
        return value if math.isfinite(value) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer literal past 1e308 (JSON allows 4,300 digits): no count or score
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def unix_time(value: Any) -> datetime | None:
    """Counts dates are unix seconds -> naive UTC datetime (out of range -> None)."""
    seconds = as_float(value)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return None


# A bare number of 5+ digits in a date field is unix seconds; "2014" is not.
_UNIX_TEXT = re.compile(r"\d{5,}(\.\d*)?")


def iso_time(value: Any) -> datetime | None:
    """Fetch dates -> naive UTC datetime.

    ISO 8601 with an offset, "Z" or none (taken as UTC), date-only too; unix
    seconds (fetch's citation.last_mentioned_on is an int in some bodies).
    Anything else -> None.
    """
    if not isinstance(value, str):
        return unix_time(value)
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return unix_time(text) if _UNIX_TEXT.fullmatch(text) else None
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # year 1 or 9999 pushed out of range by the offset
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _id_text(value: Any) -> str | None:
    """An id sent as a string or a number (tweet ids, pmids ...) -> stripped text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return (value.strip() or None) if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    """A section that should be an object; null, [] and other shapes mean "nothing"."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _json_list(value: Any) -> str | None:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list) else None


def lower_doi(value: Any) -> str | None:
    doi = _text(value)
    return doi.strip().lower() if doi else None


def _altmetric_id(value: Any) -> int:
    """The body's altmetric_id; one that no BIGINT column holds is no id (and not the database's to refuse)."""
    altmetric_id = as_int(value)
    if altmetric_id is None:
        raise ParseError("the body has no altmetric_id")
    if not 0 < altmetric_id < 2**63:
        raise ParseError(f"the altmetric_id is out of range: {str(altmetric_id)[:40]}")
    return altmetric_id


@_body_errors
def parse_counts(body: dict[str, Any], harvested_at: datetime) -> Records:
    """One counts-shaped body (Counts endpoint, or a Citations result) -> rows."""
    altmetric_id = _altmetric_id(body.get("altmetric_id"))
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
    records.id_schemes = identifier_schemes(body)
    # A source with no accounts has no cited_by_*_count key: every counts body lists all of them.
    records.sections = {"source_counts"} | {name for key, name in _COUNTS_SECTIONS.items() if key in body}
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


# Counts keys -> the table whose section they are, when present (the docs' Counts and Citations
# examples have no `context`: a key left out says nothing).
_COUNTS_SECTIONS = {"readers": "readers", "history": "score_history", "context": "score_context"}


@_body_errors
def parse_citations(body: dict[str, Any], harvested_at: datetime) -> tuple[int | None, list[Records | None]]:
    """A Citations page -> (query.total, the rows of each result in rank order).

    A result without an altmetric_id is None, so that the ranks of the others
    stay where the API put them.
    """
    results = body.get("results")
    if not isinstance(results, list):
        raise ParseError("the page has no list of results")
    query = body.get("query")
    total = as_int(query.get("total")) if isinstance(query, dict) else None
    parsed: list[Records | None] = []
    for result in results:
        usable = isinstance(result, dict) and as_int(result.get("altmetric_id")) is not None
        parsed.append(parse_counts(result, harvested_at) if usable else None)
    return total, parsed


def identifier_schemes(body: dict[str, Any]) -> set[str]:
    """The schemes whose key the body has: the identifiers it lists of them are all there are."""
    keys = {"doi": "doi", **_ID_KEYS, **_ID_LIST_KEYS}
    return {scheme for key, scheme in keys.items() if key in body}


def identifier_rows(body: dict[str, Any], altmetric_id: int) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(scheme: str, value: Any) -> None:
        text = _id_text(value)
        if text:
            text = text.lower() if scheme == "doi" else text
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


# ---- fetch ---------------------------------------------------------------------------------

# `counts` keys that are not sources: readers go to `readers`, total to outputs.posts_count,
# downloads (PMC and publisher views) to `downloads`. Any other key is told by its shape
# (_is_source), so that an unknown new section never becomes a phantom source row.
_FETCH_NOT_SOURCES = {"readers", "total", "downloads"}
# What makes a `counts` entry a source: every source entry of the real bodies has one of these.
_SOURCE_FIELDS = ("posts_count", "unique_users_count")
# Demographics names -> our dimension names (after a leading "by_" is dropped).
_DIMENSIONS = {"poster_types": "poster_type", "cohorts": "cohort", "geo": "country"}


def _is_source(name: str, values: Any) -> bool:
    """A `counts` entry is a source (known or not: `bluesky` is kept under its own name) by its shape."""
    return name not in _FETCH_NOT_SOURCES and isinstance(values, dict) and any(f in values for f in _SOURCE_FIELDS)


@_body_errors
def parse_fetch(body: dict[str, Any], harvested_at: datetime) -> Records:
    """One Fetch body -> rows of every table, posts and demographics included.

    Leaves out the outputs columns Fetch does not send (readers_count,
    accounts_count, last_updated, is_oa, url, details_url), so that storing it
    does not blank what a counts harvest stored.
    """
    if not isinstance(body, dict):
        raise ParseError("the body has no altmetric_id")
    altmetric_id = _altmetric_id(body.get("altmetric_id"))
    citation = _dict(body.get("citation"))
    counts = _dict(body.get("counts"))
    score = _dict(body.get("altmetric_score"))
    book = _dict(citation.get("book"))
    doi = lower_doi(citation.get("doi"))
    output = {
        "altmetric_id": altmetric_id,
        "doi": doi,
        "title": _text(citation.get("title")),
        "journal": _text(citation.get("journal")),
        "type": _text(citation.get("type")),
        "published_on": iso_time(citation.get("pubdate")) or iso_time(citation.get("epubdate")),
        "added_on": iso_time(citation.get("first_seen_on")),
        "score": _first(as_float(score.get("score")), as_float(body.get("score"))),
        "posts_count": as_int(_dict(counts.get("total")).get("posts_count")),
        "altmetric_jid": _text(citation.get("altmetric_jid")),
        "issns": _json_list(citation.get("issns")),
        "subjects": _json_list(citation.get("subjects")),
        "harvested_at": harvested_at,
        "publisher": _text(citation.get("publisher")),
        "authors": _json_list(citation.get("authors")),
        "abstract": _text(citation.get("abstract")),
        "last_mentioned_on": iso_time(citation.get("last_mentioned_on")),
        "book_title": _text(book.get("title")),
        "book_isbns": _json_list(book.get("isbns")),
    }
    # A section left out (include_sections, or a body without it) must not
    # blank what an earlier harvest stored: its columns are left out of the row.
    if not isinstance(body.get("citation"), dict):
        output = {k: v for k, v in output.items() if k in ("altmetric_id", "score", "posts_count", "harvested_at")}
    if not isinstance(body.get("altmetric_score"), dict) and body.get("score") is None:
        output.pop("score")
    if not isinstance(body.get("counts"), dict):
        output.pop("posts_count")
    records = Records(altmetric_id, doi, output)
    # The book's ISBNs stay out: they identify the book, which is another output.
    records.identifiers = identifier_rows(citation, altmetric_id)
    records.id_schemes = identifier_schemes(citation)
    records.sections = _fetch_sections(body)
    for name, values in counts.items():
        if not _is_source(name, values):
            continue
        records.source_counts.append(
            {
                "altmetric_id": altmetric_id,
                "source": FETCH_SOURCES.get(name, name),
                "posts_count": as_int(values.get("posts_count")),
                "unique_users_count": as_int(values.get("unique_users_count")),
            }
        )
    records.readers = reader_rows(counts.get("readers"), altmetric_id)
    records.downloads, records.downloads_timeline = download_rows(counts.get("downloads"), altmetric_id)
    records.score_history = history_rows(score.get("score_history"), altmetric_id)
    for scope, values in _dict(score.get("context_for_score")).items():
        if isinstance(values, dict):
            records.score_context.append(
                {
                    "altmetric_id": altmetric_id,
                    "scope": SCOPES.get(scope, scope),
                    "count": as_int(values.get("total_number_of_other_articles")),
                    "mean": as_float(values.get("mean")),
                    "rank": as_int(values.get("rank")),
                    "pct": as_float(values.get("this_scored_higher_than_pct")),
                    "higher_than": as_int(values.get("this_scored_higher_than")),
                    "sample_size": as_int(values.get("sample_size")),
                    "percentile": as_float(values.get("percentile")),
                    "rank_type": _text(values.get("rank_type")),
                }
            )
    records.output_relations = relation_rows(citation, altmetric_id)
    records.mentions, records.mention_citations = mention_rows(body.get("posts"), altmetric_id, harvested_at)
    records.demographics = demographic_rows(body.get("demographics"), altmetric_id)
    return records


def _fetch_sections(body: dict[str, Any]) -> set[str]:
    """The tables whose section a Fetch body carries (include_sections can leave any out)."""
    sections = set()
    counts, score = body.get("counts"), body.get("altmetric_score")
    if isinstance(counts, dict):
        sections.add("source_counts")
        if "readers" in counts:
            sections.add("readers")
        # Present (even null or {}): the body says what the downloads are now; absent: it says nothing.
        if "downloads" in counts:
            sections |= {"downloads", "downloads_timeline"}
    if isinstance(score, dict):
        # context_for_score: null is a section that says "no context".
        sections |= {t for k, t in (("score_history", "score_history"), ("context_for_score", "score_context")) if k in score}
    if isinstance(body.get("citation"), dict):
        sections.add("output_relations")
    # [] (none) is a section too; the writer decides whether a source filter cut it.
    if "posts" in body:
        sections |= {"mentions", "mention_citations"}
    if "demographics" in body:
        sections.add("demographics")
    return sections


def download_rows(downloads: Any, altmetric_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fetch's `counts.downloads` -> (downloads rows, downloads_timeline rows).

    The documented shape (Altmetric's sample Fetch response): per platform (`pmc`,
    `publisher`) totals `unique_ips`, `full_text`, `pdf`, `abstract`, and a `timeline`
    of unique-IP counts per month, {"2012-05": "42", ...}, the numbers often strings.
    Every numeric total is kept under its own name (a metric the API adds is not lost);
    a month whose value is an object is read as metric -> count. Metrics given without the
    platform level are PMC's.
    """
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    months: dict[tuple[str, str, str], dict[str, Any]] = {}
    given = _dict(downloads)
    # Some bodies give the PMC figures without the platform level ({"unique_ips": 12, "timeline": {...}}):
    # an entry that is not an object of metrics is then a metric of PMC, not a platform with nothing in it.
    flat = {k: v for k, v in given.items() if k == "timeline" or not isinstance(v, dict)}
    platforms = {k: v for k, v in given.items() if k not in flat}
    if flat:
        platforms["pmc"] = _dict(platforms.get("pmc")) | flat
    for platform, values in platforms.items():
        for metric, value in _dict(values).items():
            if metric == "timeline":
                for month, count in _dict(value).items():
                    per_metric = count.items() if isinstance(count, dict) else (("unique_ips", count),)
                    for name, number in per_metric:
                        n = as_int(number)
                        if n is not None and n >= 0:
                            months[(platform, month, name)] = {
                                "altmetric_id": altmetric_id,
                                "platform": platform,
                                "month": month,
                                "metric": name,
                                "count": n,
                            }
                continue
            n = as_int(value)
            if n is not None and n >= 0:  # negative: "not known", as for readers
                totals[(platform, metric)] = {"altmetric_id": altmetric_id, "platform": platform, "metric": metric, "count": n}
    return list(totals.values()), list(months.values())


def _first(*values: float | None) -> float | None:
    """The first value that is not None (0 is a score, so `or` will not do)."""
    return next((v for v in values if v is not None), None)


def relation_rows(citation: dict[str, Any], altmetric_id: int) -> list[dict[str, Any]]:
    """A book's chapters and a chapter's book -> output_relations rows."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}

    def add(related: Any, relation: str, title: Any = None, ordinal: Any = None) -> None:
        related_id = as_int(related)
        if related_id is not None:
            rows[(related_id, relation)] = {
                "altmetric_id": altmetric_id,
                "related_altmetric_id": related_id,
                "relation": relation,
                "title": _text(title),
                "ordinal_number": as_int(ordinal),
            }

    for chapter in _list(citation.get("chapters")):
        if isinstance(chapter, dict):
            add(chapter.get("altmetric_id"), "chapter", chapter.get("title"), chapter.get("ordinal_number"))
    # aggregate_citation_ids repeats the chapters' ids without titles: only add the ones missing.
    for related in _list(citation.get("aggregate_citation_ids")):
        related_id = as_int(related)
        if related_id is not None and (related_id, "chapter") not in rows:
            add(related_id, "chapter")
    book_title = _dict(citation.get("book")).get("title")
    for related in _list(citation.get("aggregated_in")):
        add(related, "aggregated_in", book_title)
    return list(rows.values())


def mention_id(altmetric_id: int, source: str, post_key: str) -> int:
    """A stable 63-bit id for (output, source, post): the same on every harvest and machine."""
    digest = hashlib.blake2b(f"{altmetric_id}\x1f{source}\x1f{post_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def mention_rows(posts: Any, altmetric_id: int, harvested_at: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fetch's `posts` (source -> list of posts) -> (mentions rows, mention_citations rows)."""
    found: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for name, items in _dict(posts).items():
        source = FETCH_SOURCES.get(name, name)
        for post in _list(items):
            if not isinstance(post, dict):
                continue
            row = _mention_row(post, source, altmetric_id, harvested_at)
            # One row per (source, post_key): a post listed twice keeps its last copy.
            found.pop(row["mention_id"], None)
            found[row["mention_id"]] = (row, _citation_rows(post, row["mention_id"], altmetric_id))
    mentions = [row for row, _ in found.values()]
    citations = [c for _, cited in found.values() for c in cited]
    return mentions, citations


def _mention_row(post: dict[str, Any], source: str, altmetric_id: int, harvested_at: datetime) -> dict[str, Any]:
    author = _dict(post.get("author"))
    origin = _dict(post.get("source"))  # a policy document's publishing body
    tweet_id = _id_text(post.get("tweet_id"))
    url = _text(post.get("url"))
    post_key = tweet_id or url or "sha1:" + hashlib.sha1(json.dumps(post, sort_keys=True, default=str).encode()).hexdigest()
    geo = _dict(origin.get("geo")) if source == "policy" else _dict(author.get("geo"))
    is_tweet = source == "twitter"
    # Every key always present, None where absent: one executemany per table.
    return {
        "mention_id": mention_id(altmetric_id, source, post_key),
        "altmetric_id": altmetric_id,
        "source": source,
        "post_key": post_key,
        "url": url,
        # Twitter/X terms: store ids only, never tweet text.
        "title": None if is_tweet else _text(post.get("title")),
        "summary": None if is_tweet else _text(post.get("summary")),
        "posted_on": iso_time(post.get("posted_on")),
        "license": _text(post.get("license")),
        "author_name": _text(author.get("name")),
        "author_url": _text(author.get("url")),
        "author_id_on_source": _id_text(author.get("id_on_source")),
        "author_followers": as_int(author.get("followers")),
        "tweet_id": tweet_id,
        "tweeter_id": _id_text(author.get("tweeter_id")),
        "wikipedia_lang": _text(post.get("wiki_lang")),
        "policy_source": _text(origin.get("name")),
        "country": _text(geo.get("country")),
        "video_embed_id": _embed_id(post.get("embed")),
        # For reddit, id_on_source is the subreddit's name (author.subreddit is its blurb).
        "subreddit": _text(author.get("id_on_source")) if source == "reddit" else None,
        "first_seen_at": harvested_at,
        "last_seen_at": harvested_at,
    }


def _embed_id(embed: Any) -> str | None:
    """A video's embedded id: embed.youtube_id, else any other `id` / `*_id` (vimeo_id ...)."""
    embed = _dict(embed)
    if (youtube := _id_text(embed.get("youtube_id"))) is not None:
        return youtube
    return next((i for k, v in embed.items() if isinstance(k, str) and (k == "id" or k.endswith("_id")) and (i := _id_text(v))), None)


def _citation_rows(post: dict[str, Any], mention: int, altmetric_id: int) -> list[dict[str, Any]]:
    """The outputs a post cites, always including the output whose body listed it."""
    cited = {i for i in map(as_int, _list(post.get("citation_ids"))) if i is not None}
    cited.add(altmetric_id)
    return [{"mention_id": mention, "altmetric_id": i} for i in sorted(cited)]


def demographic_rows(demographics: Any, altmetric_id: int) -> list[dict[str, Any]]:
    """Fetch's `demographics` -> long rows (platform, dimension, key, value).

    Known shapes: poster_types.<key> (twitter's), geo.<platform>.<country>,
    users.<platform>.<by_dim|cohorts>.<key>. Any other section is read the same
    way by depth (key: platform "all"; platform.key; platform.dim.key), and
    values that are not numbers are skipped.
    """
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}

    def add(platform: str, dimension: str, key: str, value: Any) -> None:
        number = as_int(value)
        if number is not None:
            rows[(platform, dimension, key)] = {
                "altmetric_id": altmetric_id,
                "platform": platform,
                "dimension": dimension,
                "key": key,
                "value": number,
            }

    for section, tree in _dict(demographics).items():
        dimension = _dimension(section)
        top_platform = "twitter" if section == "poster_types" else "all"
        for key, value in _dict(tree).items():
            if not isinstance(value, dict):
                add(top_platform, dimension, key, value)
                continue
            for sub, leaf in value.items():  # key is a platform
                if isinstance(leaf, dict):  # sub is a dimension, as in users.mendeley.by_status
                    for k, v in leaf.items():
                        add(key, _dimension(sub), k, v)
                else:
                    add(key, dimension, sub, leaf)
    return list(rows.values())


def _dimension(name: str) -> str:
    """by_status -> status, cohorts -> cohort, geo -> country; other names as they are."""
    name = name.removeprefix("by_")
    return _DIMENSIONS.get(name, name)
