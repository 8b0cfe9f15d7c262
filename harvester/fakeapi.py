"""A faithful fake of the Altmetric Details Page API v1, as an ``aiohttp.web`` application.

It backs the ``mock-api`` and ``demo`` commands and the test suite, which run the real client
against it over loopback. Everything it serves is derived deterministically from the id asked
(a blake2b hash), so a test can compute the expected database contents with :func:`counts_body`
and :func:`fetch_body` without talking to the server. The real sample bodies in
``harvester/data/`` (see ``SOURCES.md`` there) are served verbatim for their own DOIs, so the
quirks of real responses reach the parser through the same HTTP path as synthetic ones.

Behaviour that the harvester must cope with, and which the fake therefore reproduces:

* 401 without a key, 403 (plain text) for an unknown key or an endpoint the key's tier lacks;
* 404 ``Not Found`` for a deterministic share of ids (same answer on counts and fetch);
* rate-limit headers on every response, an enforced token bucket, hourly and daily windows
  (429 with ``Retry-After``);
* seeded faults (5xx, connection resets, truncated JSON, slow answers) that depend only on
  (seed, request path, how many times that path was tried), so retries eventually succeed and
  two runs issuing the same requests see the same faults.
* ``/v1/id/{altmetric_id}`` names the output that was given that id, whichever id it was first
  asked by (the harvester refreshes outputs without a DOI by their altmetric id);
* with ``FakeConfig(evolve=True)``, attention that grows from day to day (UTC days of the
  config's clock) and Citations listings that change daily, for nightly harvests: see
  :func:`_evolved` and :func:`_day_listing`. Pass the day to :func:`counts_body`,
  :func:`fetch_body` and :func:`citation_listing` to compute what such a server serves.

This module must never be reachable from a default production path: only the CLI's
``mock-api``/``demo`` commands and the tests import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any
from urllib.parse import unquote

from aiohttp import web

logger = logging.getLogger(__name__)

__all__ = [
    "FakeConfig",
    "FakeServer",
    "Stats",
    "counts_body",
    "fetch_body",
    "make_app",
    "run",
    "start",
    "ID_TYPES",
    "CITATION_TIMEFRAMES",
    "citation_listing",
    "UNLIMITED_LIMIT",
    "EVOLVE_EPOCH_DAY",
]

ID_TYPES: frozenset[str] = frozenset(
    {
        "doi",
        "handle",
        "pmid",
        "arxiv",
        "ads",
        "ssrn",
        "repec",
        "isbn",
        "id",
        "nct_id",
        "urn",
        "uri",
        "dimensions_publication_id",
    }
)
# The order in which the real counts bodies list their history (docs example, pyaltmetric).
HISTORY_TIMEFRAMES: tuple[str, ...] = (
    "1d", "2d", "3d", "4d", "5d", "6d", "1w", "1m", "3m", "6m", "1y", "at",
)
CITATION_TIMEFRAMES: frozenset[str] = frozenset(HISTORY_TIMEFRAMES)
CITATION_FILTERS: tuple[str, ...] = (
    "cited_in", "doi_prefix", "issns", "issn", "order_by", "nlmid", "subjects",
)
FETCH_SECTIONS: tuple[str, ...] = (
    "counts", "selected_quotes", "citation", "altmetric_score", "demographics", "posts",
    "score", "images",
)
# Reported as the limit of a window the fake does not enforce. Deliberately far above any
# real quota: a client that derives a pacing rate from X-HourlyRateLimit-Limit must not be
# slowed down (1,000,000/hour would be 277/s) and -Remaining must never reach 0 in a long
# benchmark against an "unlimited" server.
UNLIMITED_LIMIT = 1_000_000_000

# (fetch source name, counts key "cited_by_<key>_count", allocation weight, score per account,
#  probability that an output with attention has this source). `bluesky` is a source that
# the harvester does not know: it must be kept under its own name, never dropped.
_SOURCES: tuple[tuple[str, str, float, float, float], ...] = (
    ("twitter", "tweeters", 60.0, 0.25, 0.92),
    ("facebook", "fbwalls", 5.0, 0.25, 0.25),
    ("news", "msm", 6.0, 8.0, 0.2),
    ("blogs", "feeds", 4.0, 5.0, 0.2),
    ("policy", "policies", 2.0, 3.0, 0.08),
    ("wikipedia", "wikipedia", 2.0, 3.0, 0.1),
    ("reddit", "rdts", 2.0, 0.25, 0.08),
    ("video", "videos", 2.0, 0.25, 0.05),
    ("q&a", "qna", 1.0, 0.25, 0.04),
    ("googleplus", "gplus", 2.0, 1.0, 0.05),
    ("bluesky", "bluesky", 8.0, 0.25, 0.12),
)
SOURCE_TO_COUNTS_KEY: dict[str, str] = {s[0]: f"cited_by_{s[1]}_count" for s in _SOURCES}

# Real sample bodies, served byte for byte (endpoint, id_type, lower-cased id) -> file name.
_SAMPLES: dict[tuple[str, str, str], str] = {
    ("counts", "doi", "10.1038/news.2011.490"): "counts_researchhub-pyliteral_10.1038-news.2011.490.json",
    ("counts", "doi", "10.1038/480426a"): "counts_unattributed-pystring_10.1038-480426a.json",
    ("counts", "doi", "10.1038/news.2011.498"): "counts_docs-example_10.1038-news.2011.498.json",
}
_FETCH_SAMPLE_FILES: dict[tuple[str, int], str] = {
    ("10.1001/jama.2013.950", 1270180): "fetch_camlib_10.1001-jama.2013.950.json",
    ("10.1007/s13280-011-0222-9", 584396): "fetch_camlib_10.1007-s13280-011-0222-9.json",
    ("10.1145/2145204.2145347", 5454234): "fetch_camlib_10.1145-2145204.2145347_context-null.json",
    ("10.1596/978-1-4648-1095-4", 18897334): "fetch_camlib_10.1596-978-1-4648-1095-4_misc-and-policy.json",
    ("10.4018/978-1-4666-8271-9", 17334674): "fetch_camlib_10.4018-978-1-4666-8271-9_book-posts-empty-array.json",
    ("10.4232/1.12777", 34412823): "fetch_camlib_10.4232-1.12777_demographics-empty-array.json",
    ("10.1038/nature.2014.14583", 2068207): "fetch_docs-example_10.1038-nature.2014.14583.json",
    ("10.1038/srep00042", 194098): "fetch_sznaltmetric-edited_10.1038-srep00042.json",
    # Data-dump lines (fetch schema without top-level score/images): still a shape a
    # careful parser must accept.
    ("10.1007/bf02190744", 1491980): "fetch-schema_datadump-line_altmetric-id-1491980.json",
    ("10.1007/978-3-642-60907-7_15", 38405550): "fetch-schema_datadump-line_altmetric-id-38405550_chapter.json",
}
for (_doi, _aid), _name in _FETCH_SAMPLE_FILES.items():
    _SAMPLES[("fetch", "doi", _doi)] = _name
    _SAMPLES[("fetch", "id", str(_aid))] = _name
SAMPLE_FILES: Mapping[tuple[str, str, str], str] = _SAMPLES
# A synthetic body for a sample's DOI on the other endpoint keeps the sample's altmetric_id,
# so counts and fetch of one DOI name one output.
_SAMPLE_AIDS: dict[str, int] = {doi: aid for doi, aid in _FETCH_SAMPLE_FILES} | {
    "10.1038/news.2011.490": 241939,
    "10.1038/480426a": 502878,
    "10.1038/news.2011.498": 243700,
}
# And an id lookup of a sample's altmetric id names the sample's DOI (see _by_altmetric_id).
_SAMPLE_DOIS: dict[str, str] = {str(aid): doi for doi, aid in _SAMPLE_AIDS.items()}


# --------------------------------------------------------------------------------------------
# Configuration and statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeConfig:
    """How the fake behaves: keys and tiers, enforced limits, share of 404s, injected faults."""

    keys: tuple[str, ...] = ("demo-key",)
    counts_only_keys: tuple[str, ...] = ("counts-only-key",)
    per_second: float | None = None
    burst: int = 1
    per_hour: int | None = None
    per_day: int | None = None
    tweet_ids_per_day: int | None = None  # Fetch's tweet-id quota; None = unlimited
    not_found_pct: float = 15.0
    seed: int = 0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    html_rate: float = 0.0  # 200 with an HTML maintenance page instead of JSON (as proxies do)
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    latency: float = 0.0
    # A server-imposed pause: after this many requests, every request for pause_seconds gets a
    # 429 with Retry-After (the first one is what tells the clients; the rest were sent into it).
    pause_after: int | None = None
    pause_seconds: float = 5.0
    clock: Callable[[], float] = time.time
    # Attention grows day by day (by the UTC day of `clock`): what nightly harvests and their
    # snapshots are tested against. Off, every body is the same whatever the day.
    evolve: bool = False


@dataclass
class Stats:
    """What the fake was asked and how it answered (exposed at ``GET /_stats``).

    ``per_path`` is keyed by the percent-decoded request path without the query string
    (e.g. ``/v1/doi/10.1038/abc``), so a raw and an encoded request for one DOI count together.
    """

    total: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    per_path: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    paused: int = 0  # requests that arrived during a server-imposed pause (pause_after)
    first_at: float | None = None  # time.monotonic() of the first and the last request
    last_at: float | None = None

    @property
    def rate(self) -> float:
        """Requests per second between the first request and the last (what a client sustained)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.total - 1) / (self.last_at - self.first_at)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "total": self.total,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "per_path": dict(self.per_path),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "paused": self.paused,
            "rate": round(self.rate, 3),
        }


# --------------------------------------------------------------------------------------------
# Deterministic data
# --------------------------------------------------------------------------------------------


def _digest(*parts: str) -> bytes:
    # blake2b rather than hash(): stable across processes and PYTHONHASHSEED, and fast.
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=32).digest()


def _unit(*parts: str) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2.0**64


def _norm_id(id_type: str, identifier: str) -> str:
    # DOIs are case-insensitive; the others are hashed lower-cased too so that, say, an arXiv
    # id typed with a capital V still names the same output.
    return identifier.strip().lower()


@functools.cache
def _sample_bytes(name: str) -> bytes:
    # Loaded lazily, once: most runs never ask for a sample.
    return (resources.files("harvester") / "data" / name).read_bytes()


def _sample_name(endpoint: str, id_type: str, key: str) -> str | None:
    return _SAMPLES.get((endpoint, id_type, key))


def _is_bogus(id_type: str, key: str) -> bool:
    return id_type == "doi" and "bogus" in key.partition("/")[2]


def _is_not_found(id_type: str, key: str, not_found_pct: float) -> bool:
    if (
        ("counts", id_type, key) in _SAMPLES
        or ("fetch", id_type, key) in _SAMPLES
        or _is_bogus(id_type, key)
    ):
        return False
    return _unit("404", id_type, key) * 100.0 < not_found_pct


def _resolve(id_type: str, key: str) -> tuple[str, str]:
    """The output an id really names. A DOI with ``bogus`` in its suffix names another one,
    as the real API sometimes answers a bad DOI with a different output."""
    if _is_bogus(id_type, key):
        prefix = key.partition("/")[0]
        return "doi", f"{prefix}/real.{_digest('bogus', key).hex()[:10]}"
    return id_type, key


_WORDS_A = (
    "Global", "Rapid", "Hidden", "Emerging", "Long-term", "Regional", "Molecular", "Social",
    "Adaptive", "Early", "Systematic", "Comparative", "Genetic", "Urban", "Clinical", "Deep",
)
_WORDS_B = (
    "patterns", "effects", "drivers", "costs", "signatures", "dynamics", "limits", "origins",
    "trade-offs", "responses", "networks", "models", "measures", "risks", "benefits",
)
_WORDS_C = (
    "climate change", "gut microbiota", "sleep", "coral reefs", "public trust", "black holes",
    "antibiotic resistance", "urban heat", "language models", "malaria", "soil carbon",
    "open access", "vaccination", "biodiversity", "ageing", "dark matter", "remote work",
)
# (journal, issns, altmetric_jid, subjects, doi prefix)
_JOURNALS: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...], str], ...] = (
    ("Nature", ("0028-0836", "1476-4687"), "4f6fa50a3cf058f610003160", ("science",), "10.1038"),
    ("PLOS ONE", ("1932-6203",), "4f6fa50d3cf058f610003358", ("science",), "10.1371"),
    ("The Lancet", ("0140-6736", "1474-547X"), "4f6fa5263cf058f6100047d7", ("medicine",), "10.1016"),
    ("BMJ", ("0959-8138", "1756-1833"), "4f6fa4de3cf058f61000184a", ("medicine",), "10.1136"),
    ("Science", ("0036-8075", "1095-9203"), "4f6fa62c3cf058f6100080a1", ("science",), "10.1126"),
    ("Scientific Reports", ("2045-2322",), "4f6fa6393cf058f61000896f", ("science",), "10.1038"),
    ("eLife", ("2050-084X",), "4f6fa6373cf058f610008794", ("biology",), "10.7554"),
    ("Journal of Applied Ecology", ("0021-8901", "1365-2664"), "4f6fa5183cf058f610003d85",
     ("ecology",), "10.1111"),
)
_TYPES = ("article", "article", "article", "article", "news", "review", "book", "chapter")
_COUNTRIES = ("US", "GB", "DE", "FR", "JP", "BR", "IN", "AU", "CA", "ES", "NL", "ZA")
_POLICY_SOURCES = (
    ("World Health Organization", "CH"), ("Oxfam GB Policy & Practice", "GB"),
    ("World Bank", "US"), ("European Commission", "BE"), ("National Academies Press", "US"),
)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _heavy_tail(rnd: random.Random) -> int:
    """Posts per output: mostly 0-30, ~1% in the thousands, like real attention.

    One output in 500 is a viral one with up to 20,000 posts: a fetch body of
    several MB, which a harvester must stream through without its memory growing.
    """
    u = rnd.random()
    if u < 0.04:
        return 0
    if u < 0.90:
        return rnd.randint(1, 30)
    if u < 0.99:
        return rnd.randint(31, 400)
    if u < 0.998:
        return rnd.randint(1000, 4000)
    return rnd.randint(8000, 20000)


@dataclass(frozen=True)
class _Profile:
    """Everything the counts and fetch bodies of one synthetic output share."""

    id_type: str
    key: str
    asked: str
    altmetric_id: int
    doi: str | None
    title: str
    journal: tuple[str, tuple[str, ...], str, tuple[str, ...], str]
    type: str
    authors: tuple[str, ...]
    sources: tuple[tuple[str, int, int], ...]  # (fetch source, posts, accounts)
    misc_posts: int
    score: float
    history: tuple[tuple[str, float], ...]
    mendeley: int
    citeulike: int
    readers_as_strings: bool
    published_on: int
    added_on: int
    last_updated: int
    has_context: bool
    context_seed: int
    is_oa: bool
    demographics_empty: bool


@functools.lru_cache(maxsize=8192)
def _profile(id_type: str, key: str, asked: str) -> _Profile:
    rnd = random.Random(int.from_bytes(_digest("profile", id_type, key)[:16], "big"))
    if id_type == "id" and key.isascii() and key.isdigit():  # int() refuses other digits ("²")
        altmetric_id = int(key)
    elif id_type == "doi" and key in _SAMPLE_AIDS:
        altmetric_id = _SAMPLE_AIDS[key]
    else:
        altmetric_id = int.from_bytes(_digest("aid", id_type, key)[:5], "big") or 1
    journal = _JOURNALS[rnd.randrange(len(_JOURNALS))]
    if id_type == "doi":
        doi: str | None = key
    elif rnd.random() < 0.7:
        doi = f"{journal[4]}/{id_type}.{_digest('doi', id_type, key).hex()[:12]}"
    else:
        doi = None
    otype = "book" if id_type == "isbn" else _TYPES[rnd.randrange(len(_TYPES))]
    title = (
        f"{rnd.choice(_WORDS_A)} {rnd.choice(_WORDS_B)} of {rnd.choice(_WORDS_C)}"
        f" in {rnd.choice(_WORDS_C)}"
    )
    authors = tuple(
        f"{rnd.choice('ABCDEFGHJKLMNPRSTW')}. {rnd.choice(('Smith', 'Garcia', 'Chen', 'Okafor', 'Müller', 'Rossi', 'Kim', 'Novak'))}"
        for _ in range(rnd.randint(0, 5))
    )

    total = _heavy_tail(rnd)
    misc = 0
    if total and rnd.random() < 0.08:
        # `misc` posts exist in fetch but have no counts entry, like the World Bank sample.
        misc = min(total, rnd.randint(1, 5))
    to_share = total - misc
    active = [s for s in _SOURCES if rnd.random() < s[4]]
    if to_share and not active:
        active = [_SOURCES[0]]
    weights = [s[2] * (0.5 + rnd.random()) for s in active]
    wsum = sum(weights) or 1.0
    shares = [int(to_share * w / wsum) for w in weights]
    if active:
        shares[0] += to_share - sum(shares)  # rounding remainder to the biggest source
    sources: list[tuple[str, int, int]] = []
    score = 0.0
    for s, posts in zip(active, shares):
        if posts <= 0:
            continue
        accounts = max(1, posts - int(posts * rnd.random() * 0.15))
        sources.append((s[0], posts, accounts))
        score += accounts * s[3]
    score = round(score * (0.8 + 0.4 * rnd.random()), 3) if sources else 0.0
    fractions = sorted((rnd.random() for _ in range(11)))
    history = tuple(
        [(tf, round(score * f * f, 3)) for tf, f in zip(HISTORY_TIMEFRAMES[:-1], fractions)]
        + [("at", score)]
    )
    mendeley = int(rnd.paretovariate(1.2)) - 1 if rnd.random() < 0.8 else 0
    mendeley = min(mendeley * 3, 50_000)
    published_on = 946_684_800 + rnd.randrange(0, 24 * 365 * 86_400)
    added_on = published_on + rnd.randrange(0, 400 * 86_400)
    last_updated = added_on + rnd.randrange(0, 1500 * 86_400)
    return _Profile(
        id_type=id_type,
        key=key,
        asked=asked,
        altmetric_id=altmetric_id,
        doi=doi,
        title=title,
        journal=journal,
        type=otype,
        authors=authors,
        sources=tuple(sources),
        misc_posts=misc,
        score=score,
        history=history,
        mendeley=mendeley,
        citeulike=1 if rnd.random() < 0.03 else 0,
        readers_as_strings=rnd.random() < 0.4,
        published_on=published_on,
        added_on=added_on,
        last_updated=last_updated,
        has_context=rnd.random() < 0.88,
        context_seed=rnd.getrandbits(32),
        is_oa=rnd.random() < 0.4,
        demographics_empty=rnd.random() < 0.2,
    )


def _readers(p: _Profile) -> dict[str, Any]:
    vals = {"citeulike": p.citeulike, "mendeley": p.mendeley, "connotea": 0}
    if p.readers_as_strings:
        return {k: str(v) for k, v in vals.items()}
    return dict(vals)


def _context_scopes(p: _Profile) -> list[tuple[str, dict[str, Any]]]:
    """(counts scope name, values) for the four context scopes."""
    rnd = random.Random(p.context_seed)
    out = []
    for scope, lo, hi in (
        ("all", 5_000_000, 30_000_000),
        ("journal", 500, 120_000),
        ("similar_age_3m", 50_000, 300_000),
        ("similar_age_journal_3m", 20, 1_500),
    ):
        count = rnd.randint(lo, hi)
        pct = min(99, int(100 * (1 - math.exp(-p.score / rnd.uniform(4.0, 12.0)))))
        higher = int(count * pct / 100)
        out.append(
            (
                scope,
                {
                    "count": count,
                    "mean": round(rnd.uniform(3.0, 60.0), 6),
                    "rank": max(1, count - higher),
                    "pct": pct,
                    "higher_than": higher,
                },
            )
        )
    return out


def _images(p: _Profile) -> dict[str, str]:
    s = round(p.score)
    return {
        size: f"https://badges.altmetric.com/?size={px}&score={s}&types=mbtttttt"
        for size, px in (("small", 64), ("medium", 100), ("large", 180))
    }


def _counts_dict(p: _Profile) -> dict[str, Any]:
    """A counts body shaped like the researchhub sample (key order included)."""
    jname, issns, jid, subjects, _ = p.journal
    body: dict[str, Any] = {"title": p.title}
    if p.doi is not None:
        body["doi"] = p.doi
    it, asked = p.id_type, p.asked
    if it == "pmid":
        body["pmid"] = asked
    elif it == "arxiv":
        body["arxiv_id"] = asked
    elif it == "ads":
        body["ads_id"] = asked
    elif it in ("ssrn", "repec", "nct_id", "urn", "uri"):
        body[f"{it}_id" if it in ("ssrn", "repec") else it] = asked
    body["isbns"] = [asked] if it == "isbn" else []
    body["altmetric_jid"] = jid
    body["issns"] = list(issns)
    body["journal"] = jname
    accounts = sum(a for _, _, a in p.sources)
    body["cohorts"] = {"pub": accounts} if accounts else {}
    if p.has_context:
        body["context"] = dict(_context_scopes(p))
    body["authors"] = list(p.authors)
    body["type"] = p.type
    body["handles"] = [asked] if it == "handle" else []
    if it == "dimensions_publication_id":
        body["dimensions_publication_id"] = asked
    body["altmetric_id"] = p.altmetric_id
    body["schema"] = "1.5.4"
    body["is_oa"] = p.is_oa
    # Zero counts are left out, as the real API does.
    for src, _posts, acc in sorted(p.sources, key=lambda s: SOURCE_TO_COUNTS_KEY[s[0]]):
        body[SOURCE_TO_COUNTS_KEY[src]] = acc
    body["cited_by_posts_count"] = sum(n for _, n, _ in p.sources) + p.misc_posts
    body["cited_by_accounts_count"] = accounts
    body["last_updated"] = p.last_updated
    body["score"] = p.score
    body["history"] = dict(p.history)
    body["url"] = f"http://dx.doi.org/{p.doi}" if p.doi else f"https://example.org/{it}/{asked}"
    body["added_on"] = p.added_on
    body["published_on"] = p.published_on
    body["subjects"] = list(subjects)
    body["scopus_subjects"] = ["General"]
    body["readers"] = _readers(p)
    body["readers_count"] = p.mendeley + p.citeulike
    body["images"] = _images(p)
    body["details_url"] = f"https://www.altmetric.com/details.php?citation_id={p.altmetric_id}"
    return body


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# altmetric id -> "id_type\x1fidentifier" of the first request that built its output. An
# altmetric id is a hash of the id it was derived from and cannot be inverted, so an id lookup
# (how the harvester refreshes outputs without a DOI) needs this to name the same output.
# Bounded, oldest first out: ~150 bytes an entry, ~40 MB full, more than the counts cache holds.
# Module-wide (not per server), so tests computing bodies in-process fill it too.
_ORIGINS: dict[int, str] = {}
_ORIGINS_MAX = 250_000
_ORIGINS_LOCK = threading.Lock()  # the server may run in a thread next to the test computing bodies


def _remember_origin(altmetric_id: int, id_type: str, identifier: str) -> None:
    if altmetric_id in _ORIGINS:  # the first request wins; a lock-free check for the usual case
        return
    with _ORIGINS_LOCK:
        if len(_ORIGINS) >= _ORIGINS_MAX:
            del _ORIGINS[next(iter(_ORIGINS))]
        _ORIGINS.setdefault(altmetric_id, f"{id_type}\x1f{identifier}")


def _by_altmetric_id(identifier: str) -> tuple[str, str]:
    """(id_type, id) that an ``id`` lookup stands for: the sample DOI or the first request that
    was given this altmetric id, else ("id", identifier) itself (an output of its own, as an
    altmetric id the fake never gave out, or one forgotten since, has always been)."""
    key = identifier.strip()
    doi = _SAMPLE_DOIS.get(key)
    if doi is not None:
        return "doi", doi
    if key.isascii() and key.isdigit() and len(key) <= 20:
        origin = _ORIGINS.get(int(key))
        if origin is not None:
            id_type, _, asked = origin.partition("\x1f")
            return id_type, asked
    return "id", identifier


def _build_bytes(endpoint: str, id_type: str, identifier: str, not_found_pct: float) -> bytes | None:
    key = _norm_id(id_type, identifier)
    sample = _sample_name(endpoint, id_type, key)
    if sample is not None:
        return _sample_bytes(sample)
    if _is_not_found(id_type, key, not_found_pct):
        return None
    rtype, rkey = _resolve(id_type, key)
    asked = key if rtype == "doi" else identifier.strip()
    profile = _profile(rtype, rkey, asked)
    if id_type != "id":
        # The request itself, not the resolved id: asked again it gives these very bytes (a bogus
        # DOI's resolved DOI may be a 404 of its own).
        _remember_origin(profile.altmetric_id, id_type, identifier)
    return _dumps(_counts_dict(profile) if endpoint == "counts" else _fetch_dict(profile))


# ~1.5 kB a body: 100k entries stay near 150 MB even through a million-id demo.
@functools.lru_cache(maxsize=100_000)
def _counts_bytes(id_type: str, identifier: str, not_found_pct: float) -> bytes | None:
    # Cached encoded: a bulk harvest asks each id once, but retries and the tests' own
    # counts_body() calls ask again, and encoding is most of the cost.
    return _build_bytes("counts", id_type, identifier, not_found_pct)


def counts_body(id_type: str, identifier: str, not_found_pct: float = 15.0, day: int | None = None) -> dict[str, Any] | None:
    """The body the fake serves on ``GET /v1/{id_type}/{identifier}``; None means 404.

    Pure and deterministic. Pass the server's ``not_found_pct`` if it is not the default,
    and with ``evolve`` the UTC day number (unix time // 86400) the server's clock is on
    (None: the body of a server without ``evolve``, the same every day). An ``id`` lookup names
    the output given that altmetric id, as the server does (see :func:`_by_altmetric_id`).
    """
    if id_type == "id":
        id_type, identifier = _by_altmetric_id(identifier)
    raw = _counts_bytes(id_type, identifier, float(not_found_pct))
    if raw is not None and day is not None:
        raw = _evolved("counts", raw, day)
    return None if raw is None else json.loads(raw)


# ---- fetch -----------------------------------------------------------------------------------


def _post(src: str, i: int, p: _Profile, rnd: random.Random) -> dict[str, Any]:
    """One post of ``src``, shaped like the posts of the fetch samples."""
    uid = _digest("post", str(p.altmetric_id), src, str(i)).hex()[:16]
    posted = _iso(p.added_on + rnd.randrange(0, max(1, p.last_updated - p.added_on + 1)))
    cids = [p.altmetric_id]
    if src == "twitter":
        # Current rules: ids only, never the tweet text.
        tweeter = str(10_000 + int(uid[:8], 16))
        return {
            "license": "gnip",
            "citation_ids": cids,
            "author": {
                "tweeter_id": tweeter,
                "id_on_source": f"user{tweeter}",
                "followers": int(rnd.paretovariate(1.1) * 50),
            },
            "tweet_id": str(10**17 + int(uid, 16) % 10**18),
            "posted_on": posted,
        }
    title = f"On {rnd.choice(_WORDS_C)}: {p.title[:40]}"
    base: dict[str, Any] = {
        "title": title,
        "url": f"https://{src.replace('&', '')}.example.org/p/{uid}",
        "license": "public",
        "citation_ids": cids,
        "posted_on": posted,
    }
    if src in ("news", "blogs", "misc"):
        base["summary"] = f"A {src} item about {p.title.lower()}."
        outlet = rnd.choice(("Daily Planet", "Science Weekly", "The Lab Notebook", "Field Notes"))
        base["author"] = {"name": outlet, "url": f"https://{outlet.replace(' ', '').lower()}.example"}
        if src == "blogs":
            base["author"]["description"] = ""
    elif src == "policy":
        name, country = rnd.choice(_POLICY_SOURCES)
        base["source"] = {"name": name, "description": f"Policy documents from {name}.",
                          "geo": {"country": country}}
        base["page_url"] = base["url"] + "/page"
        base["collections"] = []
        base["author"] = {"image": "https://s3.amazonaws.com/cache.altmetric.com/policy/t.jpg"}
    elif src == "wikipedia":
        lang = rnd.choice(("en", "de", "fr", "es"))
        base["url"] = f"http://{lang}.wikipedia.org/?diff=prev&oldid={int(uid[:7], 16)}"
        base["summary"] = f"{title} is a topic."
        base["page_url"] = f"http://{lang}.wikipedia.org/?curid={int(uid[7:13], 16)}"
        base["wiki_lang"] = lang
        base["author"] = {"name": f"Editor{uid[:4]}", "url": f"http://{lang}.wikipedia.org/wiki/User:E{uid[:4]}"}
    elif src == "video":
        yid = uid[:11]
        base["url"] = f"https://www.youtube.com/watch?v={yid}"
        base["summary"] = "Video description."
        base["embed"] = {"type": "youtube", "youtube_id": yid}
        base["author"] = {"name": f"Channel {uid[:4]}", "id_on_source": f"UC{uid}"}
    elif src == "reddit":
        del base["license"]
        base["author"] = {"name": f"redditor_{uid[:6]}", "url": "http://www.reddit.com/r/science",
                          "id_on_source": "science", "followers": 26_000_000, "subreddit": "Science"}
    elif src == "facebook":
        base["summary"] = title
        base["author"] = {"name": f"Page {uid[:5]}", "url": f"https://www.facebook.com/{int(uid[:10], 16)}",
                          "facebook_wall_name": False, "id_on_source": str(int(uid[:10], 16))}
    elif src == "q&a":
        base["summary"] = "Why does this happen?"
        base["author"] = {"id_on_source": f"asker {uid[:5]}"}
    else:  # googleplus, bluesky and any other source: the minimal common shape
        base["author"] = {"name": f"{src} user {uid[:5]}", "id_on_source": uid[:10],
                          "followers": rnd.randint(0, 5000)}
    return base


def _fetch_dict(p: _Profile) -> dict[str, Any]:
    rnd = random.Random(int.from_bytes(_digest("fetch", str(p.altmetric_id), p.key)[:16], "big"))
    jname, issns, jid, subjects, _ = p.journal
    counts: dict[str, Any] = {"readers": _readers(p)}
    for src, n_posts, acc in p.sources:
        entry: dict[str, Any] = {"unique_users_count": acc}
        if src != "twitter":  # the docs example lists no twitter users (ids are restricted)
            entry["unique_users"] = (
                [rnd.randint(10_000, 99_999) for _ in range(min(acc, 6))]
                if src == "blogs"  # blogs list ints in the real samples
                else [f"{src}-user-{rnd.randint(1, 10**6)}" for _ in range(min(acc, 6))]
            )
        entry["posts_count"] = n_posts
        counts[src] = entry
    total = sum(n for _, n, _ in p.sources) + p.misc_posts
    counts["total"] = {"posts_count": total}

    citation: dict[str, Any] = {"altmetric_jid": jid, "authors": list(p.authors)}
    if p.doi:
        citation["doi"] = p.doi
    citation["first_seen_on"] = _iso(p.added_on)
    citation["issns"] = list(issns)
    if p.type == "book" or p.id_type == "isbn":
        citation["isbns"] = [p.asked] if p.id_type == "isbn" else []
    if p.id_type == "pmid":
        citation["pmid"] = p.asked
    if p.id_type == "handle":
        citation["handles"] = [p.asked]
    citation["journal"] = jname
    if total:
        citation["last_mentioned_on"] = p.last_updated  # an int even in fetch, as in the samples
    citation["links"] = [f"http://dx.doi.org/{p.doi}"] if p.doi else []
    citation["pubdate"] = _iso(p.published_on)
    citation["subjects"] = list(subjects)
    citation["scopus_subjects"] = ["General"]
    citation["title"] = p.title
    citation["type"] = p.type
    citation["mendeley_url"] = f"https://www.mendeley.com/catalogue/{p.altmetric_id:x}/"

    context: dict[str, Any] | None = None
    if p.has_context:
        names = {"journal": "this_journal", "similar_age_journal_3m": "similar_age_this_journal_3m"}
        context = {}
        for scope, v in _context_scopes(p):
            context[names.get(scope, scope)] = {
                "total_number_of_other_articles": v["count"],
                "mean": v["mean"],
                "rank": v["rank"],
                "this_scored_higher_than_pct": v["pct"],
                "this_scored_higher_than": v["higher_than"],
                "rank_type": "exact",
                "sample_size": v["count"],
                "percentile": v["pct"],
            }

    demographics: dict[str, Any] | list[Any]
    if p.demographics_empty:
        demographics = []
    else:
        tw = {src: n for src, n, _ in p.sources}.get("twitter", 0)
        demographics = {
            "poster_types": {"member_of_the_public": tw},
            "users": {"mendeley": {"by_status": {"Researcher": p.mendeley},
                                   "by_discipline": {"Unspecified": p.mendeley}}},
            "geo": {"twitter": {rnd.choice(_COUNTRIES): tw} if tw else {}},
        }

    post_map: dict[str, Any] = {}
    for src, n, _acc in p.sources:
        post_map[src] = [_post(src, i, p, rnd) for i in range(n)]
    if p.misc_posts:
        post_map["misc"] = [_post("misc", i, p, rnd) for i in range(p.misc_posts)]
    # The real API answers [] rather than {} when there are none.
    posts: dict[str, Any] | list[Any] = post_map or []

    return {
        "altmetric_id": p.altmetric_id,
        "counts": counts,
        "citation": citation,
        "altmetric_score": {
            "score": p.score,
            "score_history": dict(reversed(p.history[:-1])) | {"at": p.score},
            "context_for_score": context,
        },
        "demographics": demographics,
        "posts": posts,
        "score": p.score,
        "images": _images(p),
    }


@functools.lru_cache(maxsize=4096)
def _fetch_bytes(id_type: str, identifier: str, not_found_pct: float) -> bytes | None:
    return _build_bytes("fetch", id_type, identifier, not_found_pct)


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _filter_fetch(
    body: dict[str, Any],
    include_sources: list[str] | None,
    exclude_sources: list[str] | None,
    include_sections: list[str] | None,
) -> dict[str, Any]:
    """Apply the fetch query parameters to a parsed body (a new dict; the input is untouched)."""

    def keep(src: str) -> bool:
        if include_sources is not None and src not in include_sources:
            return False
        return not (exclude_sources is not None and src in exclude_sources)

    out = dict(body)
    if include_sources is not None or exclude_sources is not None:
        counts = body.get("counts")
        posts = body.get("posts")
        new_posts: dict[str, Any] | list[Any] = posts if isinstance(posts, list) else {}
        if isinstance(posts, dict):
            new_posts = {s: v for s, v in posts.items() if keep(s)} or []
        if isinstance(counts, dict):
            new_counts = {
                s: v for s, v in counts.items() if s in ("readers", "total") or keep(s)
            }
            kept = sum(
                v.get("posts_count", 0)
                for s, v in new_counts.items()
                if s not in ("readers", "total") and isinstance(v, dict)
            )
            if isinstance(new_posts, dict) and "misc" in new_posts:
                kept += len(new_posts["misc"])
            if "total" in new_counts:
                new_counts["total"] = {"posts_count": kept}
            out["counts"] = new_counts
        if "posts" in body:
            out["posts"] = new_posts
    if include_sections is not None:
        out = {k: v for k, v in out.items() if k == "altmetric_id" or k in include_sections}
    return out


def fetch_body(id_type: str, identifier: str, not_found_pct: float = 15.0, day: int | None = None) -> dict[str, Any] | None:
    """The unfiltered body the fake serves on ``GET /v1/fetch/{id_type}/{identifier}``; None = 404.

    ``day`` as for :func:`counts_body`. With it, scores and counts grow but the posts listed do
    not: a Fetch body's ``counts`` may then count more twitter posts than its ``posts`` hold.
    """
    if id_type == "id":
        id_type, identifier = _by_altmetric_id(identifier)
    raw = _fetch_bytes(id_type, identifier, float(not_found_pct))
    if raw is not None and day is not None:
        raw = _evolved("fetch", raw, day)
    return None if raw is None else json.loads(raw)


# ---- attention that grows from day to day (FakeConfig.evolve) ---------------------------------

EVOLVE_EPOCH_DAY = 20454  # 2026-01-01 UTC (unix days): attention grows from here on
# Days back that each history timeframe looks ("at", all time, is the score itself).
_DAYS = {"1d": 1, "2d": 2, "3d": 3, "4d": 4, "5d": 5, "6d": 6, "1w": 7, "1m": 30, "3m": 90, "6m": 180, "1y": 365}


def _growth(altmetric_id: int) -> float:
    """New tweets a day: none for a quarter of outputs, 0-2 for most, 20-200 for a few movers.

    Keyed by the altmetric id (itself fixed by the resolved id), so the Counts, Fetch and
    ``id`` lookups of one output, and the real samples, grow alike.
    """
    u = _unit("growth", str(altmetric_id))
    if u < 0.25:
        return 0.0
    if u < 0.90:
        return (u - 0.25) / 0.65 * 2.0
    if u < 0.97:
        return 2.0 + (u - 0.90) / 0.07 * 18.0
    return 20.0 + (u - 0.97) / 0.03 * 180.0


def _gained(rate: float, day: int) -> int:
    """Twitter posts (and accounts) an output growing at ``rate`` a day has gained by ``day``."""
    return math.floor(rate * max(0, day - EVOLVE_EPOCH_DAY))


def _extra(altmetric_id: int, day: int) -> int:
    return _gained(_growth(altmetric_id), day)


def _grown(score: float, extra: int) -> float:
    # A quarter point a twitter account, as the profiles score them.
    return round(score + 0.25 * extra, 3)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _grown_history(history: dict[str, Any], rate: float, day: int, score: Any) -> dict[str, Any]:
    """A history (counts ``history``, fetch ``score_history``) on ``day``.

    Its values are the score *gained* over each timeframe (so 1d <= 1w <= 1y <= at, and an old
    output shows 0s: see the real samples and docs/schema.md), hence each grows by what the
    output gained between ``day - days(tf)`` and ``day``; ``at`` is the score on ``day``.
    Keys the fake does not know, and values that are not numbers, are passed on as they are.
    """
    extra = _gained(rate, day)
    out: dict[str, Any] = {}
    for tf, v in history.items():
        if tf == "at" and _is_number(score):
            out[tf] = score
        elif tf in _DAYS and _is_number(v):
            out[tf] = _grown(v, extra - _gained(rate, day - _DAYS[tf]))
        else:
            out[tf] = v
    return out


def _evolved(endpoint: str, raw: bytes, day: int) -> bytes:
    """A Counts or Fetch body as it is on ``day``: ``extra`` more twitter posts and accounts,
    a quarter point of score each, with ``extra = floor(rate * (day - EVOLVE_EPOCH_DAY))``.

    Counts: ``cited_by_tweeters_count``, ``cited_by_posts_count`` and ``cited_by_accounts_count``
    grow (added when the base lacks them), and ``score`` and ``history``. Fetch: ``score``,
    ``altmetric_score.score`` and ``.score_history``, ``counts.twitter`` (added when absent) and
    ``counts.total``; the ``posts`` listed do not grow (they stay the base body's), nor do
    context, cohorts, demographics, readers or badge URLs. The real samples grow like synthetic
    bodies. An output that has not moved (yet) is served byte for byte as without evolve.
    """
    if day <= EVOLVE_EPOCH_DAY:
        return raw  # nothing has grown yet: no need to parse
    body = json.loads(raw)
    aid = body.get("altmetric_id")
    if not isinstance(aid, int) or isinstance(aid, bool):
        return raw
    rate = _growth(aid)
    extra = _gained(rate, day)
    if extra <= 0:
        # Also keeps zero counts out of the body, as the real API leaves them out.
        return raw
    if endpoint == "counts":
        for key in ("cited_by_tweeters_count", "cited_by_posts_count", "cited_by_accounts_count"):
            body[key] = (body.get(key) or 0) + extra
        score: Any = body.get("score")
        if _is_number(score):
            score = body["score"] = _grown(score, extra)
        if isinstance(body.get("history"), dict):
            body["history"] = _grown_history(body["history"], rate, day, score)
        return _dumps(body)
    if _is_number(body.get("score")):
        body["score"] = _grown(body["score"], extra)
    counts = body.get("counts")
    if isinstance(counts, dict):
        twitter = counts.setdefault("twitter", {"unique_users_count": 0, "posts_count": 0})
        if isinstance(twitter, dict):
            for key in ("unique_users_count", "posts_count"):
                twitter[key] = (twitter.get(key) or 0) + extra
        total = counts.setdefault("total", {"posts_count": 0})
        if isinstance(total, dict):
            total["posts_count"] = (total.get("posts_count") or 0) + extra
    altmetric_score = body.get("altmetric_score")
    if isinstance(altmetric_score, dict):
        now: Any = altmetric_score.get("score")
        if _is_number(now):
            now = altmetric_score["score"] = _grown(now, extra)
        if isinstance(altmetric_score.get("score_history"), dict):
            altmetric_score["score_history"] = _grown_history(
                altmetric_score["score_history"], rate, day, now
            )
    return _dumps(body)


# ---- citations ---------------------------------------------------------------------------------


def _listing_names(timeframe: str, filters: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """(DOI prefix, tag) of the DOIs a Citations query lists: ``{prefix}/cit.{tag}.…``."""
    fkey = "&".join(f"{k}={v}" for k, v in filters)
    prefix = dict(filters).get("doi_prefix") or _JOURNALS[int(_unit("cit-prefix", fkey) * len(_JOURNALS))][4]
    return prefix.lower(), _digest("cit", timeframe, fkey).hex()[:8]


def _existing_doi(stem: str, not_found_pct: float) -> str:
    """``stem``, or ``stem.N`` for the first N that exists: listed outputs are never a 404."""
    doi = stem
    for salt in range(1, 50):
        if not _is_not_found("doi", doi, not_found_pct):
            break
        doi = f"{stem}.{salt}"
    return doi


@functools.lru_cache(maxsize=512)
def _citation_listing(
    timeframe: str, filters: tuple[tuple[str, str], ...], not_found_pct: float
) -> tuple[str, ...]:
    """The DOIs listed for a query, best score first: stable for (timeframe, filters, rank)."""
    fkey = "&".join(f"{k}={v}" for k, v in filters)
    total = 20 + int(_unit("cit-total", timeframe, fkey) * 581)
    prefix, tag = _listing_names(timeframe, filters)
    dois = [_existing_doi(f"{prefix}/cit.{tag}.{rank}", not_found_pct) for rank in range(total)]
    scored = [(_profile("doi", d, d).score, d) for d in dois]
    if dict(filters).get("order_by", "score") == "score":
        scored.sort(key=lambda t: (-t[0], t[1]))
    return tuple(d for _, d in scored)


def _filter_key(filters: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The filters of a query as the server keys a listing: CITATION_FILTERS order, empty ones out."""
    given = filters or {}
    return tuple((k, given[k]) for k in CITATION_FILTERS if given.get(k))


def citation_listing(
    timeframe: str,
    filters: Mapping[str, str] | None = None,
    not_found_pct: float = 15.0,
    day: int | None = None,
) -> list[str]:
    """The DOIs ``GET /v1/citations/{timeframe}`` lists, in rank order (all pages).

    ``filters`` as the query sends them (``{"doi_prefix": "10.1038"}``; ``num_results``, ``page``
    and ``key`` are ignored); ``not_found_pct`` the server's; ``day`` the UTC day number of a
    server with ``evolve`` (None: without). ``query.total`` is the length of this list.
    """
    return list(_day_listing(timeframe, _filter_key(filters), float(not_found_pct), day))


@functools.lru_cache(maxsize=512)
def _day_listing(
    timeframe: str, filters: tuple[tuple[str, str], ...], not_found_pct: float, day: int | None
) -> tuple[str, ...]:
    """With ``evolve``, a listing changes daily: each output of the base listing is active on a
    day with probability 0.7, 5-24 new ones appear (their DOIs name the day), and the ranks follow
    that day's scores, so the movers climb. Without (``day`` None), the base listing."""
    base = _citation_listing(timeframe, filters, not_found_pct)
    if day is None:
        return base
    active = [d for d in base if _unit("active", d, str(day)) < 0.7]
    prefix, tag = _listing_names(timeframe, filters)
    new = [
        _existing_doi(f"{prefix}/cit.{tag}.d{day}.{i}", not_found_pct)
        for i in range(5 + int(_unit("new", timeframe, str(day)) * 20))
    ]
    listed = active + new
    if dict(filters).get("order_by", "score") != "score":
        return tuple(listed)
    scored = []
    for doi in listed:
        # The score the counts body of `day` has (see _evolved), without building that body.
        p = _profile("doi", doi, doi)
        scored.append((_grown(p.score, _extra(p.altmetric_id, day)), doi))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return tuple(d for _, d in scored)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _KeyState:
    """Rate-limit state of one key: a token bucket and two fixed windows."""

    __slots__ = ("tokens", "last", "hour_idx", "hour_used", "day_idx", "day_used", "tweets_used")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.last = now
        self.hour_idx = -1
        self.hour_used = 0
        self.day_idx = -1
        self.day_used = 0
        self.tweets_used = 0

    def roll(self, now: float) -> None:
        hour, day = int(now // 3600), int(now // 86_400)
        if hour != self.hour_idx:
            self.hour_idx, self.hour_used = hour, 0
        if day != self.day_idx:
            self.day_idx, self.day_used, self.tweets_used = day, 0, 0


class _State:
    def __init__(self, cfg: FakeConfig, stats: Stats) -> None:
        self.cfg = cfg
        self.stats = stats
        self.full_keys = frozenset(cfg.keys)
        self.counts_only = frozenset(cfg.counts_only_keys) - self.full_keys
        self.keys: dict[str, _KeyState] = {}
        self.attempts: Counter[str] = Counter()
        self.faulty = any(
            r > 0 for r in (cfg.error_rate, cfg.reset_rate, cfg.truncate_rate, cfg.html_rate, cfg.slow_rate)
        )
        self.hour_limit = cfg.per_hour if cfg.per_hour is not None else UNLIMITED_LIMIT
        self.day_limit = cfg.per_day if cfg.per_day is not None else UNLIMITED_LIMIT
        self.not_found_pct = float(cfg.not_found_pct)
        self.admitted = 0  # requests past auth, for pause_after
        self.pause_until: float | None = None

    def day(self) -> int | None:
        """The UTC day number the bodies are on, or None when they do not evolve."""
        return int(self.cfg.clock() // 86_400) if self.cfg.evolve else None

    def key_state(self, key: str, now: float) -> _KeyState:
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = _KeyState(self.cfg.burst, now)
        ks.roll(now)
        return ks

    def limit_headers(self, ks: _KeyState | None, endpoint: str = "counts") -> dict[str, str]:
        hour_used = ks.hour_used if ks else 0
        day_used = ks.day_used if ks else 0
        headers = {
            "X-HourlyRateLimit-Limit": str(self.hour_limit),
            "X-HourlyRateLimit-Remaining": str(max(0, self.hour_limit - hour_used)),
            "X-DailyRateLimit-Limit": str(self.day_limit),
            "X-DailyRateLimit-Remaining": str(max(0, self.day_limit - day_used)),
        }
        if endpoint == "fetch":
            tweets = self.cfg.tweet_ids_per_day or UNLIMITED_LIMIT
            headers["X-TweetIDRateLimit-Limit"] = str(tweets)
            headers["X-TweetIDRateLimit-Remaining"] = str(max(0, tweets - (ks.tweets_used if ks else 0)))
        return headers


_STATE: web.AppKey[_State] = web.AppKey("fakeapi_state", _State)
_STATS: web.AppKey[Stats] = web.AppKey("fakeapi_stats", Stats)

_NOT_FOUND = b"Not Found"
_5XX_BODIES: dict[int, tuple[bytes, str]] = {
    500: (b"Internal Server Error", "text/plain"),
    502: (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
        "text/html",
    ),
    503: (b"Service Unavailable: the API is down for maintenance", "text/plain"),
}


class _Reset(Exception):
    """Internal: the fault plan says to drop the connection without answering."""


def _text(status: int, text: str, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", headers=headers)


def _rate_limited(st: _State, ks: _KeyState, now: float) -> web.Response | None:
    """A 429 if this key may not make a request now; else None (and a token is taken)."""
    cfg = st.cfg
    retry: int | None = None
    what = ""
    if cfg.per_day is not None and ks.day_used >= cfg.per_day:
        retry = max(1, math.ceil((ks.day_idx + 1) * 86_400 - now))
        what = "daily"
    elif cfg.per_hour is not None and ks.hour_used >= cfg.per_hour:
        retry = max(1, math.ceil((ks.hour_idx + 1) * 3600 - now))
        what = "hourly"
    elif cfg.per_second is not None:
        ks.tokens = min(float(cfg.burst), ks.tokens + (now - ks.last) * cfg.per_second)
        ks.last = now
        if ks.tokens >= 1.0:
            ks.tokens -= 1.0
        else:
            retry = max(1, math.ceil((1.0 - ks.tokens) / cfg.per_second))
            what = "per-second"
    if retry is None:
        return None
    headers = st.limit_headers(ks)
    headers["Retry-After"] = str(retry)
    return _text(429, f"Too Many Requests: {what} rate limit exceeded", headers)


def _paused(st: _State, ks: _KeyState, now: float) -> web.Response | None:
    """A 429 with Retry-After while the server-imposed pause lasts (it starts after pause_after requests)."""
    cfg = st.cfg
    if cfg.pause_after is None:
        return None
    if st.pause_until is None and st.admitted >= cfg.pause_after:
        st.pause_until = now + cfg.pause_seconds
    st.admitted += 1
    if st.pause_until is None or now >= st.pause_until:
        return None
    st.stats.paused += 1
    headers = st.limit_headers(ks)
    headers["Retry-After"] = str(max(1, math.ceil(st.pause_until - now)))
    return _text(429, "Too Many Requests: the API asks clients to pause", headers)


_MAINTENANCE_PAGE = (
    b"<!DOCTYPE html><html><head><title>Down for maintenance</title></head>"
    b"<body><h1>We'll be back shortly</h1></body></html>"
)


def _fault_plan(st: _State, fault_key: str) -> tuple[str | None, bool, int]:
    """(fault kind or None, slow?, 5xx status) for the n-th attempt at ``fault_key``."""
    cfg = st.cfg
    n = st.attempts[fault_key]
    st.attempts[fault_key] = n + 1
    d = _digest("fault", str(cfg.seed), fault_key, str(n))
    u = [int.from_bytes(d[i : i + 6], "big") / 2.0**48 for i in range(0, 30, 6)]
    kind: str | None = None
    # Independent draws per kind, so each rate means what it says when set alone.
    if u[0] < cfg.reset_rate:
        kind = "reset"
    elif u[1] < cfg.error_rate:
        kind = "error"
    elif u[2] < cfg.truncate_rate:
        kind = "truncate"
    elif _unit("html", str(cfg.seed), fault_key, str(n)) < cfg.html_rate:
        kind = "html"
    slow = u[3] < cfg.slow_rate
    status = (500, 502, 503)[int(u[4] * 3)]
    return kind, slow, status


def _route(
    st: _State, endpoint: str, parts: list[str], query: Mapping[str, str]
) -> tuple[int, bytes, str]:
    """(status, body, content type) for a request that passed auth and rate limits."""
    if endpoint == "citations":
        return _citations(st, parts, query)
    if len(parts) < 2 or not parts[1]:
        return 404, _NOT_FOUND, "text/plain"
    id_type = unquote(parts[0])
    identifier = unquote("/".join(parts[1:]))
    if id_type not in ID_TYPES:
        return 400, f"Bad Request: unknown identifier type {id_type!r}".encode(), "text/plain"
    if "badrequest" in identifier.lower():
        # A scripted trigger: the real API answers 400 to identifiers it cannot parse.
        return 400, f"Bad Request: invalid {id_type} {identifier!r}".encode(), "text/plain"
    if "servererror" in identifier.lower():
        # A scripted trigger: one id the server always fails on (while the rest work).
        return 500, b"Internal Server Error", "text/plain"
    day = st.day()
    if id_type == "id":
        # The output that was given this altmetric id, as the real API answers it (the harvester
        # refreshes outputs without a DOI so); looked up before the body caches, which key by id.
        id_type, identifier = _by_altmetric_id(identifier)
    if endpoint == "counts":
        body = _counts_bytes(id_type, identifier, st.not_found_pct)
        if body is None:
            return 404, _NOT_FOUND, "text/plain"
        body = body if day is None else _merged(identifier, _evolved("counts", body, day), day)
        return 200, _scripted("counts", identifier, body), "application/json"
    body = _fetch_bytes(id_type, identifier, st.not_found_pct)
    if body is None:
        return 404, _NOT_FOUND, "text/plain"
    if day is not None:
        body = _merged(identifier, _evolved("fetch", body, day), day)
    body = _scripted("fetch", identifier, body)
    inc, exc = _split_list(query.get("include_sources")), _split_list(query.get("exclude_sources"))
    sections = _split_list(query.get("include_sections"))
    if inc is not None or exc is not None or sections is not None:
        body = _dumps(_filter_fetch(json.loads(body), inc, exc, sections))
    return 200, body, "application/json"


def _merged(identifier: str, raw: bytes, day: int) -> bytes:
    """With --evolve, an id containing `merged` is given a new altmetric_id every day, as the real
    API does when it merges records: the same DOI, another id. Asked by that id, it answers as by the DOI."""
    if "merged" not in identifier.lower():
        return raw
    body = json.loads(raw)
    aid = body.get("altmetric_id")
    if not isinstance(aid, int) or isinstance(aid, bool):
        return raw
    new = aid * 1000 + day % 1000
    body["altmetric_id"] = new
    if isinstance(body.get("citation"), dict) and "altmetric_id" in body["citation"]:
        body["citation"]["altmetric_id"] = new
    _remember_origin(new, "doi" if body.get("doi") else "id", body.get("doi") or identifier)
    return _dumps(body)


def _scripted(endpoint: str, identifier: str, raw: bytes) -> bytes:
    """Scripted triggers for values a database may refuse: an id containing `nulbyte` gets NUL
    characters in its title and a readers key, `longvalue` 300-character history and readers
    keys, `hugecount` a readers count of 10**12 (past a 32-bit INTEGER)."""
    lowered = identifier.lower()
    if not any(t in lowered for t in ("nulbyte", "longvalue", "hugecount")):
        return raw
    body = json.loads(raw)
    fetch = endpoint == "fetch"
    readers = body["counts"]["readers"] if fetch else body["readers"]
    history = body["altmetric_score"]["score_history"] if fetch else body["history"]
    if "nulbyte" in lowered:
        holder = body["citation"] if fetch else body
        holder["title"] = "nul\x00byte " + str(holder.get("title"))
        readers["nul\x00reader"] = 1
    if "longvalue" in lowered:
        history["h" * 300] = 1.5
        readers["p" * 300] = 2
    if "hugecount" in lowered:
        readers["mendeley"] = 10**12
    return _dumps(body)


def _citations(st: _State, parts: list[str], query: Mapping[str, str]) -> tuple[int, bytes, str]:
    if len(parts) != 1 or unquote(parts[0]) not in CITATION_TIMEFRAMES:
        tf = unquote("/".join(parts))
        return 400, f"Bad Request: unknown timeframe {tf!r}".encode(), "text/plain"
    timeframe = unquote(parts[0])
    try:
        num = int(query.get("num_results", "25"))
        page = int(query.get("page", "1"))
    except ValueError:
        return 400, b"Bad Request: num_results and page must be integers", "text/plain"
    if not 1 <= num <= 99:
        return 400, b"Bad Request: num_results must be between 1 and 99", "text/plain"
    if page < 1:
        return 400, b"Bad Request: page must be 1 or more", "text/plain"
    filters = _filter_key(query)  # as citation_listing() keys it
    day = st.day()
    listing = _day_listing(timeframe, filters, st.not_found_pct, day)
    start = (page - 1) * num
    if start >= len(listing):
        return 404, _NOT_FOUND, "text/plain"
    results = []
    for doi in listing[start : start + num]:
        raw = _counts_bytes("doi", doi, st.not_found_pct)
        assert raw is not None  # the listing only holds DOIs that exist
        results.append(json.loads(raw if day is None else _evolved("counts", raw, day)))
    q: dict[str, Any] = {"total": len(listing), "page": page, "num_results": num,
                         "timeframe": timeframe}
    q.update(filters)
    return 200, _dumps({"query": q, "results": results}), "application/json"


async def _handle(request: web.Request) -> web.StreamResponse:
    st = request.app[_STATE]
    stats = st.stats
    cfg = st.cfg
    path_raw = request.raw_path.partition("?")[0]
    path = unquote(path_raw)
    stats.total += 1
    stats.last_at = time.monotonic()
    if stats.first_at is None:
        stats.first_at = stats.last_at
    stats.per_path[path] += 1
    if cfg.latency:
        await asyncio.sleep(cfg.latency)
    try:
        resp = await _answer(st, request, path_raw, path)
    except _Reset:
        stats.faults["reset"] += 1
        transport = request.transport
        if transport is not None:
            transport.abort()
        # aiohttp's write then fails with a ConnectionError, which it ignores quietly; the
        # client sees the connection drop (ServerDisconnectedError / ClientOSError).
        return web.Response(status=500)
    stats.by_status[resp.status] += 1
    if resp.status == 429:
        stats.rate_limited += 1
    return resp


async def _answer(st: _State, request: web.Request, path_raw: str, path: str) -> web.Response:
    cfg = st.cfg
    query = request.query
    key = query.get("key")
    if not key:
        return _text(401, "Unauthorized: an API key is required (pass ?key=...)",
                     st.limit_headers(None))
    if key not in st.full_keys and key not in st.counts_only:
        return _text(403, "Forbidden: the API key is not valid", st.limit_headers(None))
    parts = path_raw.split("/")
    if len(parts) < 4 or parts[1] != "v1":
        return _text(404, "Not Found", st.limit_headers(None))
    now = cfg.clock()
    ks = st.key_state(key, now)
    if parts[2] in ("fetch", "citations"):
        endpoint, rest = parts[2], parts[3:]
    else:
        endpoint, rest = "counts", parts[2:]
    if endpoint != "counts" and key in st.counts_only:
        return _text(
            403,
            f"Forbidden: this API key's tier does not include the {endpoint} endpoint",
            st.limit_headers(ks),
        )
    paused = _paused(st, ks, now)
    if paused is not None:
        return paused
    limited = _rate_limited(st, ks, now)
    if limited is not None:
        return limited
    if endpoint == "fetch" and cfg.tweet_ids_per_day is not None and ks.tweets_used >= cfg.tweet_ids_per_day:
        # Fetch's own quota: tweet ids served per day; the rest of the API still works.
        headers = st.limit_headers(ks, endpoint)
        headers["Retry-After"] = str(max(1, math.ceil(86_400 - now % 86_400)))
        return _text(429, "Too Many Requests: the tweet-id quota of this key is spent", headers)
    # Reserve the windows now (a slow answer must not let concurrent requests overshoot),
    # and give the reservation back below unless the answer is a 200 or a 404.
    hour_idx, day_idx = ks.hour_idx, ks.day_idx
    ks.hour_used += 1
    ks.day_used += 1
    status = 0
    try:
        kind: str | None = None
        if st.faulty:
            fault_key = path + "?" + "&".join(
                f"{k}={v}" for k, v in sorted(query.items()) if k != "key"
            )
            kind, slow, err_status = _fault_plan(st, fault_key)
            if slow:
                st.stats.faults["slow"] += 1
                await asyncio.sleep(cfg.slow_seconds)
            if kind == "reset":
                raise _Reset
            if kind == "error":
                st.stats.faults["error"] += 1
                status = err_status
                body, ctype = _5XX_BODIES[err_status]
                return web.Response(status=status, body=body, content_type=ctype,
                                    headers=st.limit_headers(ks, endpoint))
        status, body, ctype = _route(st, endpoint, rest, query)
        if endpoint == "fetch" and status == 200 and cfg.tweet_ids_per_day is not None:
            posts = json.loads(body).get("posts")
            ks.tweets_used += len(posts.get("twitter") or []) if isinstance(posts, dict) else 0
        if kind == "truncate" and status == 200:
            st.stats.faults["truncate"] += 1
            body = body[: len(body) // 2]
        elif kind == "html" and status == 200:
            st.stats.faults["html"] += 1
            body, ctype = _MAINTENANCE_PAGE, "text/html"
        return web.Response(status=status, body=body, content_type=ctype,
                            headers=st.limit_headers(ks, endpoint))
    finally:
        if status not in (200, 404):
            if ks.hour_idx == hour_idx:
                ks.hour_used -= 1
            if ks.day_idx == day_idx:
                ks.day_used -= 1


async def _stats_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATS].as_dict())


def make_app(cfg: FakeConfig) -> web.Application:
    """The fake API as an aiohttp application; :func:`app_stats` gives its Stats."""
    app = web.Application()
    stats = Stats()
    app[_STATS] = stats
    app[_STATE] = _State(cfg, stats)
    app.router.add_get("/_stats", _stats_handler)
    # One catch-all route: DOIs and handles contain '/', and percent-decoding is done on the
    # raw path by the handler so that %2F-free raw and encoded DOIs map to the same id.
    app.router.add_get("/v1/{tail:.*}", _handle)
    return app


def app_stats(app: web.Application) -> Stats:
    """The Stats object of an app made by :func:`make_app`."""
    return app[_STATS]


class FakeServer:
    """A running fake: ``url`` is the API base (``http://127.0.0.1:PORT/v1``)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, stats: Stats) -> None:
        self._runner = runner
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}/v1"
        self.stats = stats

    async def close(self) -> None:
        """Stop listening and close connections."""
        await self._runner.cleanup()

    async def __aenter__(self) -> FakeServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start(cfg: FakeConfig, host: str = "127.0.0.1", port: int = 0) -> FakeServer:
    """Start the fake in the running loop; port 0 picks a free port."""
    app = make_app(cfg)
    # access_log=None: a bulk harvest makes thousands of requests a second.
    # A short shutdown_timeout: slow-fault handlers must not hold close() for a minute.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return FakeServer(runner, host, int(bound), app[_STATS])


@contextlib.contextmanager
def serve_in_thread(cfg: FakeConfig) -> Iterator[FakeServer]:
    """Run the fake API on its own event loop in a daemon thread, for callers that are not async."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-api", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(cfg), loop).result(timeout=30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()



async def _serve_forever(cfg: FakeConfig, host: str, port: int, announce: Callable[[str], None] | None) -> None:
    server = await start(cfg, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    (announce or logger.info)(
        f"fake Altmetric API listening on {server.url} (full keys: {', '.join(cfg.keys) or '-'}; "
        f"counts-only keys: {', '.join(cfg.counts_only_keys) or '-'}); Ctrl-C stops it"
    )
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
        logger.info("fake Altmetric API stopped after %d requests", server.stats.total)


def run(
    cfg: FakeConfig, host: str = "127.0.0.1", port: int = 8787, announce: Callable[[str], None] | None = None
) -> None:
    """Serve the fake until Ctrl-C or SIGTERM (blocking; for ``harvester mock-api``).

    ``announce`` receives the line that says where it listens (default: logged at INFO).
    """
    asyncio.run(_serve_forever(cfg, host, port, announce))


def iter_sample_files() -> Iterable[tuple[str, str, str, str]]:
    """(endpoint, id_type, id, file name) for every real sample the fake serves verbatim."""
    for (endpoint, id_type, ident), name in sorted(_SAMPLES.items()):
        yield endpoint, id_type, ident, name
