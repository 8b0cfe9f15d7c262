"""Deterministic bodies: every answer derived from the id asked, and the real samples served verbatim."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from harvester.parse import TIMEFRAMES

logger = logging.getLogger(__name__)


# The order in which the real counts bodies list their history (docs example, pyaltmetric).
HISTORY_TIMEFRAMES: tuple[str, ...] = TIMEFRAMES  # one definition, the parser's
CITATION_TIMEFRAMES: frozenset[str] = frozenset(HISTORY_TIMEFRAMES)
CITATION_FILTERS: tuple[str, ...] = (
    "cited_in",
    "doi_prefix",
    "issns",
    "issn",
    "order_by",
    "nlmid",
    "subjects",
)
FETCH_SECTIONS: tuple[str, ...] = (
    "counts",
    "selected_quotes",
    "citation",
    "altmetric_score",
    "demographics",
    "posts",
    "score",
    "images",
)
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
    if ("counts", id_type, key) in _SAMPLES or ("fetch", id_type, key) in _SAMPLES or _is_bogus(id_type, key):
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
    "Global",
    "Rapid",
    "Hidden",
    "Emerging",
    "Long-term",
    "Regional",
    "Molecular",
    "Social",
    "Adaptive",
    "Early",
    "Systematic",
    "Comparative",
    "Genetic",
    "Urban",
    "Clinical",
    "Deep",
)
_WORDS_B = (
    "patterns",
    "effects",
    "drivers",
    "costs",
    "signatures",
    "dynamics",
    "limits",
    "origins",
    "trade-offs",
    "responses",
    "networks",
    "models",
    "measures",
    "risks",
    "benefits",
)
_WORDS_C = (
    "climate change",
    "gut microbiota",
    "sleep",
    "coral reefs",
    "public trust",
    "black holes",
    "antibiotic resistance",
    "urban heat",
    "language models",
    "malaria",
    "soil carbon",
    "open access",
    "vaccination",
    "biodiversity",
    "ageing",
    "dark matter",
    "remote work",
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
    ("Journal of Applied Ecology", ("0021-8901", "1365-2664"), "4f6fa5183cf058f610003d85", ("ecology",), "10.1111"),
)
_TYPES = ("article", "article", "article", "article", "news", "review", "book", "chapter")
_COUNTRIES = ("US", "GB", "DE", "FR", "JP", "BR", "IN", "AU", "CA", "ES", "NL", "ZA")
_POLICY_SOURCES = (
    ("World Health Organization", "CH"),
    ("Oxfam GB Policy & Practice", "GB"),
    ("World Bank", "US"),
    ("European Commission", "BE"),
    ("National Academies Press", "US"),
)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


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
    title = f"{rnd.choice(_WORDS_A)} {rnd.choice(_WORDS_B)} of {rnd.choice(_WORDS_C)} in {rnd.choice(_WORDS_C)}"
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
    fractions = sorted(rnd.random() for _ in range(11))
    history = tuple([(tf, round(score * f * f, 3)) for tf, f in zip(HISTORY_TIMEFRAMES[:-1], fractions)] + [("at", score)])
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
        base["source"] = {"name": name, "description": f"Policy documents from {name}.", "geo": {"country": country}}
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
        base["author"] = {
            "name": f"redditor_{uid[:6]}",
            "url": "http://www.reddit.com/r/science",
            "id_on_source": "science",
            "followers": 26_000_000,
            "subreddit": "Science",
        }
    elif src == "facebook":
        base["summary"] = title
        base["author"] = {
            "name": f"Page {uid[:5]}",
            "url": f"https://www.facebook.com/{int(uid[:10], 16)}",
            "facebook_wall_name": False,
            "id_on_source": str(int(uid[:10], 16)),
        }
    elif src == "q&a":
        base["summary"] = "Why does this happen?"
        base["author"] = {"id_on_source": f"asker {uid[:5]}"}
    else:  # googleplus, bluesky and any other source: the minimal common shape
        base["author"] = {"name": f"{src} user {uid[:5]}", "id_on_source": uid[:10], "followers": rnd.randint(0, 5000)}
    return base


def _pmc(p: _Profile) -> tuple[str, dict[str, Any]] | None:
    """(pmcid, counts.downloads) of an article in PubMed Central (about a third of the articles), else None.

    The shape of Altmetric's documented Fetch response: per-platform totals and a timeline
    of unique IPs per month whose numbers are strings. Its own seed: the other parts of the
    body stay what they were before the fake served downloads.
    """
    if p.type != "article" or _unit("pmc", p.key) >= 0.35:
        return None
    rnd = random.Random(int.from_bytes(_digest("downloads", str(p.altmetric_id), p.key)[:16], "big"))
    start = datetime.fromtimestamp(max(p.published_on, 1_262_304_000), tz=UTC)  # PMC's logs begin in Jan 2010
    timeline: dict[str, str] = {}
    year, month = start.year, start.month
    for _ in range(rnd.randint(1, 8)):
        timeline[f"{year:04d}-{month:02d}"] = str(rnd.randint(0, 90))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    unique_ips = sum(int(v) for v in timeline.values())
    downloads = {
        "unique_ips": unique_ips,
        "full_text": unique_ips + rnd.randint(0, 40),
        "pdf": rnd.randint(0, unique_ips),
        "abstract": rnd.randint(0, 10),
        # Newest month first, as in the documented example.
        "timeline": dict(reversed(timeline.items())),
    }
    return f"PMC{int.from_bytes(_digest('pmcid', p.key)[:3], 'big') + 1_000_000}", {"pmc": downloads}


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
    pmc = _pmc(p)
    if pmc is not None:
        counts["downloads"] = pmc[1]

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
    if pmc is not None:
        citation["pmcid"] = pmc[0]
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
            "users": {"mendeley": {"by_status": {"Researcher": p.mendeley}, "by_discipline": {"Unspecified": p.mendeley}}},
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


# `counts` keys a source filter leaves in place: they are no source.
_NOT_SOURCES = ("readers", "total", "downloads")


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
            new_counts = {s: v for s, v in counts.items() if s in _NOT_SOURCES or keep(s)}
            kept = sum(v.get("posts_count", 0) for s, v in new_counts.items() if s not in _NOT_SOURCES and isinstance(v, dict))
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


def iter_sample_files() -> Iterable[tuple[str, str, str, str]]:
    """(endpoint, id_type, id, file name) for every real sample the fake serves verbatim."""
    for (endpoint, id_type, ident), name in sorted(_SAMPLES.items()):
        yield endpoint, id_type, ident, name
