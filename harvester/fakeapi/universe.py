"""A universe of outputs with attention on some days and not others (FakeConfig.universe).

The model, its parameters and its calibration are described in docs/fakeapi.md. In short:

* output ``i`` (0 <= i < size) has the DOI :func:`universe_doi` ``(i)``, and the usual
  deterministic body of that DOI (bodies.py) as its state before the epoch day;
* each UTC day from the epoch on, a seeded RNG draws, per busyness tier, which outputs have
  attention that day (O(attended) a day, never a pass over the universe); each attention event
  adds posts (or, now and then, deletes some: a score drop), and changes that output's counts
  and score on that day only;
* Mendeley readers drift at a per-output rate whatever the attention;
* the Citations listing of timeframe T on day D holds exactly the outputs with an event on the
  days ``D - days(T) + 1 .. D`` (and not before the epoch).

Every function here is pure given (size, seed, attention_rate, epoch, not_found_pct): the server
and a test computing the truth share one :class:`Universe` per parameter set (:func:`universe_for`).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import random
import re
import threading
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from harvester.fakeapi.bodies import (
    _JOURNALS,
    _SOURCES,
    SOURCE_TO_COUNTS_KEY,
    _counts_bytes,
    _digest,
    _dumps,
    _fetch_bytes,
    _profile,
)
from harvester.fakeapi.config import FakeConfig
from harvester.fakeapi.evolution import _DAYS, EVOLVE_EPOCH_DAY
from harvester.fakeapi.listings import _existing_doi, _filter_key

# The default share of the universe with attention on a day. Altmetric tracks tens of millions
# of outputs, and its 1d Citations listing holds hundreds of thousands a day (issue 19): ~1%.
DEFAULT_ATTENTION_RATE = 0.01
# Busyness tiers: (share of the universe, probability of attention on a day before scaling to
# the attention rate). A heavy tail: most outputs are rarely mentioned, a few almost daily.
# Unscaled, the expected share a day is 0.00955.
TIERS: tuple[tuple[float, float], ...] = (
    (0.001, 0.70),  # busy: attention on most days
    (0.019, 0.15),  # active: about once a week
    (0.18, 0.02),  # occasional: a few days a year... a month
    (0.80, 0.003),  # quiet: about once a year
)
# Share of attention events that delete posts (a score drop), when there are gained posts to delete.
DROP_SHARE = 0.03
# Sources an event adds posts to, with the share of events (out of 256) and score per account
# taken from bodies._SOURCES; drops always delete twitter posts.
_GAIN_SOURCES: tuple[tuple[str, int], ...] = (("twitter", 218), ("news", 231), ("blogs", 241), ("bluesky", 256))
_WEIGHT: tuple[float, ...] = tuple(next(s[3] for s in _SOURCES if s[0] == name) for name, _ in _GAIN_SOURCES)
_CODE_NAMES: tuple[str, ...] = tuple(name for name, _ in _GAIN_SOURCES)
ORDER_BY: tuple[str, ...] = ("score", "at_score", "readers", "first_seen", "pubdate")
# The API's cited_in names -> the fake's source names (bodies._SOURCES). Names without an entry
# (linkedin, rh, f1000, forum, peerreview, pinterest) name sources no fake output has.
_CITED_IN: dict[str, str] = {
    "twitter": "twitter",
    "facebook": "facebook",
    "blogs": "blogs",
    "news": "news",
    "video": "video",
    "reddit": "reddit",
    "gplus": "googleplus",
    "qna": "q&a",
    "policy": "policy",
    "wikipedia": "wikipedia",
    "bluesky": "bluesky",
}
# Distinct DOI prefixes of the fake's journals, which the universe's DOIs are spread over.
_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(j[4] for j in _JOURNALS))
_DOI_RE = re.compile(r"(10\.\d+)/univ\.(\d+)(?:\.\d+)?")
# xxHash's 32-bit primes: the multiplier of the rank permutation must be coprime with the size.
_PRIMES = (2654435761, 2246822519, 3266489917, 668265263, 374761393)
_M64 = (1 << 64) - 1


def _fmix(z: int) -> int:
    """splitmix64's finaliser: a cheap, well-mixed 64-bit integer hash (no blake2b per event)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix(a: int, b: int, c: int) -> int:
    return _fmix(_fmix(_fmix(a + 0x9E3779B97F4A7C15) ^ b) ^ c)


_SALT_PREFIX, _SALT_EVENT, _SALT_READERS, _SALT_RANK, _SALT_DAY = 1, 2, 3, 4, 5


def _stem(i: int) -> str:
    return f"{_PREFIXES[_fmix(i * 8 + _SALT_PREFIX) % len(_PREFIXES)]}/univ.{i}"


def universe_doi(i: int, not_found_pct: float = 15.0) -> str:
    """The DOI of universe output ``i``: ``{prefix}/univ.{i}`` (``.N`` appended when that DOI
    would be one of the server's 404s, so that every universe output exists). Independent of the
    universe's size and seed; ``not_found_pct`` must be the server's."""
    return _existing_doi(_stem(i), float(not_found_pct))


def universe_dois(n: int, start: int = 0, not_found_pct: float = 15.0) -> list[str]:
    """The DOIs of universe outputs ``start .. start + n - 1``: a tracked list drawn from the universe."""
    return [universe_doi(i, not_found_pct) for i in range(start, start + n)]


def _journal_index(doi: str) -> int:
    """The journal of the DOI's body without building the body: the first draw of
    ``bodies._profile``'s RNG (a test keeps the two in step)."""
    seed = int.from_bytes(_digest("profile", "doi", doi)[:16], "big")
    return random.Random(seed).randrange(len(_JOURNALS))


def _norm_issn(v: str) -> str:
    return v.replace("-", "").strip().upper()


def _split(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


class Truth(NamedTuple):
    """What an output's Counts body says on a day: the values a daily series is checked against."""

    score: float
    posts_count: int
    accounts_count: int
    readers_count: int


@dataclass(frozen=True)
class _Day:
    """One day's attention: the attended outputs (sorted), their events, and a bitmap of them."""

    idx: array[int]  # sorted universe indices
    n: array[int]  # posts gained (negative: deleted), the same number of accounts
    src: bytes  # index into _GAIN_SOURCES
    bits: bytearray  # bit i set when output i has attention that day


@dataclass(frozen=True)
class _State:
    """The attention an output had from the epoch to a day."""

    events: tuple[tuple[int, int, int], ...]  # (day, posts, source code)
    score: float  # score gained since the epoch (drops subtract)
    posts: int
    by_source: dict[int, int]  # source code -> posts (= accounts) gained

    def gained_since(self, first_day: int) -> float:
        """Score gained on days >= first_day."""
        return sum(n * _WEIGHT[c] for d, n, c in self.events if d >= first_day)


@dataclass(frozen=True)
class _Base:
    """What the listing's filters and orders need of an output's base body."""

    score: float
    posts: int
    accounts: int
    readers: int
    added_on: int
    published_on: int
    sources: frozenset[str]
    altmetric_id: int


class Universe:
    """``size`` outputs with daily attention. Thread-safe: the fake's server thread and a test
    computing the truth may share one (days are built once, in order, under a lock)."""

    def __init__(
        self,
        size: int,
        seed: int = 0,
        attention_rate: float = DEFAULT_ATTENTION_RATE,
        epoch: int = EVOLVE_EPOCH_DAY,
        not_found_pct: float = 15.0,
    ) -> None:
        if size < 1:
            raise ValueError("a universe needs at least one output")
        if not 0.0 <= attention_rate <= 1.0:
            raise ValueError("attention_rate is a share of the universe a day, 0..1")
        self.size = size
        self.seed = seed
        self.attention_rate = attention_rate
        self.epoch = epoch
        self.not_found_pct = float(not_found_pct)
        # Tiers are contiguous ranges of a rank, an affine permutation of the index: O(1) both
        # ways, so a tier's members are drawn as ranks without listing them.
        self._a = next(p for p in _PRIMES if size % p)
        self._ainv = pow(self._a, -1, size) if size > 1 else 0
        self._b = _fmix(seed * 8 + _SALT_RANK) % size
        scale = attention_rate / sum(share * p for share, p in TIERS)
        self.tiers: list[tuple[int, int, float]] = []  # (first rank, end rank, daily probability)
        cum = 0.0
        for t, (share, p) in enumerate(TIERS):
            lo = round(cum * size)
            cum += share
            hi = size if t == len(TIERS) - 1 else round(cum * size)
            self.tiers.append((lo, hi, min(1.0, p * scale)))
        self._days: list[_Day] = []
        self._twitter = array("i", [0]) * size  # twitter posts gained so far, while building days
        self._lock = threading.Lock()
        self._listings: dict[tuple[str, tuple[tuple[str, str], ...], int], tuple[int, ...]] = {}

    # ---- identities -------------------------------------------------------------------------

    def doi(self, i: int) -> str:
        return universe_doi(i, self.not_found_pct)

    def dois(self, n: int, start: int = 0) -> list[str]:
        if start < 0 or start + n > self.size:
            raise ValueError(f"outputs {start}..{start + n - 1} are not in a universe of {self.size}")
        return universe_dois(n, start, self.not_found_pct)

    def index(self, doi: str) -> int | None:
        """The universe index of a DOI, or None when the DOI is not a universe output."""
        key = doi.strip().lower()
        m = _DOI_RE.fullmatch(key)
        if m is None:
            return None
        i = int(m[2])
        if i >= self.size or self.doi(i) != key:
            return None
        return i

    def tier(self, i: int) -> int:
        """0 (busy) .. 3 (quiet)."""
        rank = (self._a * i + self._b) % self.size
        return next(t for t, (lo, hi, _) in enumerate(self.tiers) if lo <= rank < hi)

    # ---- days ---------------------------------------------------------------------------------

    def _day(self, day: int) -> _Day | None:
        """The attention of ``day`` (None before the epoch), building the days up to it in order."""
        if day < self.epoch:
            return None
        k = day - self.epoch
        if k >= len(self._days):
            with self._lock:
                while len(self._days) <= k:
                    self._days.append(self._build(self.epoch + len(self._days)))
        return self._days[k]

    def _build(self, day: int) -> _Day:
        picked: list[int] = []
        for t, (lo, hi, p) in enumerate(self.tiers):
            if hi <= lo or p <= 0.0:
                continue
            rnd = random.Random(_mix(self.seed, day, t * 8 + _SALT_DAY))
            k = min(hi - lo, int(p * (hi - lo) + rnd.random()))  # rounded at random: exact on average
            ainv, b, size = self._ainv, self._b, self.size
            picked += [(ainv * (r - b)) % size for r in rnd.sample(range(lo, hi), k)]
        picked.sort()
        n = array("h")
        src = bytearray()
        bits = bytearray((self.size >> 3) + 1)
        gained = self._twitter
        drop_cut = int(DROP_SHARE * 65536)
        for i in picked:
            h = _mix(self.seed, i, day * 8 + _SALT_EVENT)
            bits[i >> 3] |= 1 << (i & 7)
            g = gained[i]
            if g > 0 and (h & 0xFFFF) < drop_cut:
                # Deleted posts: only posts gained since the epoch, so no count goes below its base.
                k = min(g, 1 + ((h >> 16) & 1))
                n.append(-k)
                src.append(0)
                gained[i] = g - k
                continue
            posts = 1 + (h >> 20) % 3
            if (h >> 24) & 0xFF < 13:  # ~5% of events are bursts
                posts += (h >> 32) % 40
            u = (h >> 40) & 0xFF
            code = next(c for c, (_, cut) in enumerate(_GAIN_SOURCES) if u < cut)
            n.append(posts)
            src.append(code)
            if code == 0:
                gained[i] = g + posts
        return _Day(array("i", picked), n, bytes(src), bits)

    def attended_indices(self, day: int) -> list[int]:
        """Indices of the outputs with attention on ``day``, sorted."""
        d = self._day(day)
        return [] if d is None else list(d.idx)

    def attended(self, day: int) -> set[str]:
        """DOIs of the outputs with attention on ``day``: exactly the 1d listing of that day."""
        return {self.doi(i) for i in self.attended_indices(day)}

    def window(self, timeframe: str, day: int) -> tuple[int, int] | None:
        """(first day, last day) of a timeframe's window on ``day``, clipped at the epoch; None
        for ``at`` (all time) and when the window ends before the epoch."""
        if timeframe == "at":
            return None
        first = max(self.epoch, day - _DAYS[timeframe] + 1)
        return (first, day) if day >= first else None

    def _state(self, i: int, day: int) -> _State:
        events: list[tuple[int, int, int]] = []
        if day >= self.epoch:
            self._day(day)
            bi, bit = i >> 3, 1 << (i & 7)
            for k in range(day - self.epoch + 1):
                d = self._days[k]
                if d.bits[bi] & bit:
                    j = bisect.bisect_left(d.idx, i)
                    events.append((self.epoch + k, d.n[j], d.src[j]))
        by_source: dict[int, int] = {}
        score = 0.0
        posts = 0
        for _, n, c in events:
            by_source[c] = by_source.get(c, 0) + n
            score += n * _WEIGHT[c]
            posts += n
        return _State(tuple(events), score, posts, by_source)

    def readers_drift(self, i: int, day: int) -> int:
        """Mendeley readers gained by ``day``: a steady per-output rate, whatever the attention
        (half the outputs gain none, most others one every 4+ days, a tenth up to 2 a day)."""
        if day <= self.epoch:
            return 0
        u = (_mix(self.seed, i, _SALT_READERS) & 0xFFFFFF) / float(1 << 24)
        if u < 0.5:
            return 0
        rate = (u - 0.5) / 0.4 * 0.25 if u < 0.9 else 0.25 + (u - 0.9) / 0.1 * 1.75
        return math.floor(rate * (day - self.epoch))

    # ---- the truth ----------------------------------------------------------------------------

    def _base(self, i: int) -> _Base:
        doi = self.doi(i)
        p = _profile("doi", doi, doi)
        return _Base(
            score=p.score,
            posts=sum(n for _, n, _ in p.sources) + p.misc_posts,
            accounts=sum(a for _, _, a in p.sources),
            readers=p.mendeley + p.citeulike,
            added_on=p.added_on,
            published_on=p.published_on,
            sources=frozenset(s for s, _, _ in p.sources),
            altmetric_id=p.altmetric_id,
        )

    def _truth(self, i: int, base: _Base, st: _State, day: int) -> Truth:
        return Truth(
            round(base.score + st.score, 3),
            base.posts + st.posts,
            base.accounts + st.posts,
            base.readers + self.readers_drift(i, day),
        )

    def truth(self, doi: str, day: int) -> Truth | None:
        """(score, posts_count, accounts_count, readers_count) of the output's Counts body on
        ``day``; None when the DOI is not a universe output."""
        i = self.index(doi)
        if i is None:
            return None
        return self._truth(i, self._base(i), self._state(i, day), day)

    def series(self, doi: str, first_day: int, last_day: int) -> list[Truth]:
        """:meth:`truth` on each day ``first_day .. last_day``, in one pass over the days."""
        i = self.index(doi)
        if i is None:
            raise ValueError(f"{doi} is not a universe output")
        base = self._base(i)
        st = self._state(i, last_day)
        out = []
        for day in range(first_day, last_day + 1):
            score, posts = 0.0, 0
            for d, n, c in st.events:
                if d <= day:
                    score += n * _WEIGHT[c]
                    posts += n
            out.append(
                Truth(round(base.score + score, 3), base.posts + posts, base.accounts + posts, base.readers + self.readers_drift(i, day))
            )
        return out

    # ---- bodies ---------------------------------------------------------------------------------

    def evolve_bytes(self, endpoint: str, i: int, raw: bytes, day: int) -> bytes:
        """A universe output's Counts or Fetch body (as bodies.py builds it) as it is on ``day``."""
        body = json.loads(raw)
        st = self._state(i, day)
        drift = self.readers_drift(i, day)
        if endpoint == "counts":
            self._counts(body, st, drift, day)
        else:
            self._fetch(body, st, drift, day)
        return _dumps(body)

    def counts_body(self, doi: str, day: int) -> dict[str, Any] | None:
        """The body the server serves on ``GET /v1/doi/{doi}`` on ``day``; None when the DOI is
        not a universe output."""
        return self._body("counts", doi, day)

    def fetch_body(self, doi: str, day: int) -> dict[str, Any] | None:
        """The unfiltered body of ``GET /v1/fetch/doi/{doi}`` on ``day``; None when not a universe
        output. Its posts are the base body's: they neither grow nor shrink (counts do)."""
        return self._body("fetch", doi, day)

    def _body(self, endpoint: str, doi: str, day: int) -> dict[str, Any] | None:
        i = self.index(doi)
        if i is None:
            return None
        build = _counts_bytes if endpoint == "counts" else _fetch_bytes
        raw = build("doi", doi, self.not_found_pct)
        assert raw is not None  # universe DOIs always exist
        result: dict[str, Any] = json.loads(self.evolve_bytes(endpoint, i, raw, day))
        return result

    def _history(self, old: Mapping[str, Any], st: _State, day: int, score: float) -> dict[str, Any]:
        # Universe outputs' history is the model's: the score gained over each window (so an
        # output absent from a timeframe's listing shows 0 for it), `at` the score.
        out: dict[str, Any] = {}
        for tf in old:
            if tf == "at":
                out[tf] = score
            elif tf in _DAYS:
                out[tf] = round(st.gained_since(day - _DAYS[tf] + 1), 3)
            else:
                out[tf] = old[tf]
        return out

    def _counts(self, body: dict[str, Any], st: _State, drift: int, day: int) -> None:
        for code, n in st.by_source.items():
            key = SOURCE_TO_COUNTS_KEY[_CODE_NAMES[code]]
            v = (body.get(key) or 0) + n
            if v > 0:
                body[key] = v
            else:
                body.pop(key, None)  # zero counts are left out, as the real API does
        body["cited_by_posts_count"] = (body.get("cited_by_posts_count") or 0) + st.posts
        accounts = (body.get("cited_by_accounts_count") or 0) + st.posts
        body["cited_by_accounts_count"] = accounts
        if "cohorts" in body:
            body["cohorts"] = {"pub": accounts} if accounts else {}
        score = round(float(body.get("score") or 0.0) + st.score, 3)
        body["score"] = score
        if isinstance(body.get("history"), dict):
            body["history"] = self._history(body["history"], st, day, score)
        if st.events:
            body["last_updated"] = max(int(body.get("last_updated") or 0), st.events[-1][0] * 86_400 + 43_200)
        self._readers(body.get("readers"), drift)
        if drift:
            body["readers_count"] = int(body.get("readers_count") or 0) + drift
        if isinstance(body.get("images"), dict):
            body["images"] = {
                k: re.sub(r"score=\d+", f"score={round(score)}", v) if isinstance(v, str) else v for k, v in body["images"].items()
            }

    @staticmethod
    def _readers(readers: Any, drift: int) -> None:
        if drift and isinstance(readers, dict):
            old = readers.get("mendeley", 0)
            new = int(old) + drift
            readers["mendeley"] = str(new) if isinstance(old, str) else new  # strings stay strings

    def _fetch(self, body: dict[str, Any], st: _State, drift: int, day: int) -> None:
        counts = body.get("counts")
        if isinstance(counts, dict):
            for code, n in st.by_source.items():
                name = _CODE_NAMES[code]
                entry = counts.setdefault(name, {"unique_users_count": 0, "posts_count": 0})
                entry["unique_users_count"] = (entry.get("unique_users_count") or 0) + n
                entry["posts_count"] = (entry.get("posts_count") or 0) + n
                if entry["posts_count"] <= 0 and entry["unique_users_count"] <= 0:
                    del counts[name]
            total = counts.setdefault("total", {"posts_count": 0})
            total["posts_count"] = (total.get("posts_count") or 0) + st.posts
            self._readers(counts.get("readers"), drift)
        score = round(float(body.get("score") or 0.0) + st.score, 3)
        if "score" in body:
            body["score"] = score
        alt = body.get("altmetric_score")
        if isinstance(alt, dict):
            alt["score"] = score
            if isinstance(alt.get("score_history"), dict):
                alt["score_history"] = self._history(alt["score_history"], st, day, score)

    # ---- listings -----------------------------------------------------------------------------

    def listing_indices(self, timeframe: str, filters: Iterable[tuple[str, str]], day: int) -> tuple[int, ...]:
        """The universe indices ``GET /v1/citations/{timeframe}`` lists on ``day``, in order.

        ``filters`` as listings._filter_key gives them. Raises ValueError for an unknown order_by.
        Cached: a listing does not change within a day.
        """
        fkey = tuple(filters)
        cache_key = (timeframe, fkey, day)
        hit = self._listings.get(cache_key)
        if hit is not None:
            return hit
        f = dict(fkey)
        order = f.get("order_by", "score")
        if order not in ORDER_BY:
            raise ValueError(f"order_by must be one of {', '.join(ORDER_BY)}")
        win = self.window(timeframe, day)
        gained: dict[int, float] = {}
        if timeframe == "at":
            candidates: Iterable[int] = range(self.size)
        else:
            if win is not None:
                for d in range(win[0], win[1] + 1):
                    dd = self._day(d)
                    assert dd is not None
                    for i, n, c in zip(dd.idx, dd.n, dd.src):
                        gained[i] = gained.get(i, 0.0) + n * _WEIGHT[c]
            candidates = sorted(gained)
        picked = [i for i in candidates if self._matches(i, f, day)]
        keys: dict[int, float] = {}
        if order == "score" and timeframe != "at":
            keys = {i: round(gained[i], 3) for i in picked}
        else:
            for i in picked:
                base = self._base(i)
                if order in ("score", "at_score"):
                    keys[i] = round(base.score + self._state(i, day).score, 3)
                elif order == "readers":
                    keys[i] = base.readers + self.readers_drift(i, day)
                elif order == "first_seen":
                    keys[i] = base.added_on
                else:
                    keys[i] = base.published_on
        # Highest first (newest first for dates); ties by index, so the order is total and stable.
        picked.sort(key=lambda i: (-keys[i], i))
        out = tuple(picked)
        with self._lock:
            if len(self._listings) >= 64:
                del self._listings[next(iter(self._listings))]
            self._listings[cache_key] = out
        return out

    def listing(self, timeframe: str, filters: Mapping[str, str] | None, day: int) -> list[str]:
        """The DOIs the Citations listing holds on ``day`` (all pages, in order)."""
        # Keyed as the server keys a query's filters, so both share the cached listing.
        return [self.doi(i) for i in self.listing_indices(timeframe, _filter_key(filters), day)]

    def _matches(self, i: int, f: Mapping[str, str], day: int) -> bool:
        if "nlmid" in f:
            return False  # the fake's bodies carry no NLM ids
        if "doi_prefix" in f:
            prefix = f["doi_prefix"].strip().lower().rstrip("/")
            if _stem(i).partition("/")[0] != prefix:
                return False
        issns = f.get("issns") or f.get("issn")
        subjects = f.get("subjects")
        if issns or subjects:
            journal = _JOURNALS[_journal_index(self.doi(i))]
            if issns and not {_norm_issn(x) for x in _split(issns)} & {_norm_issn(x) for x in journal[1]}:
                return False
            if subjects and not {x.lower() for x in _split(subjects)} & set(journal[3]):
                return False
        if "cited_in" in f:
            wanted = {_CITED_IN.get(x.lower(), "") for x in _split(f["cited_in"])} - {""}
            st = self._state(i, day)
            have = set(self._base(i).sources) | {_CODE_NAMES[c] for c, n in st.by_source.items() if n > 0}
            if not wanted & have:
                return False
        return True


def universe_for(
    size: int,
    seed: int = 0,
    attention_rate: float = DEFAULT_ATTENTION_RATE,
    epoch: int = EVOLVE_EPOCH_DAY,
    not_found_pct: float = 15.0,
) -> Universe:
    """The one Universe of these parameters in this process (its days and listings are cached)."""
    # Normalised before the cache, which keys keyword and positional calls apart.
    return _universe(int(size), int(seed), float(attention_rate), int(epoch), float(not_found_pct))


@functools.lru_cache(maxsize=4)
def _universe(size: int, seed: int, attention_rate: float, epoch: int, not_found_pct: float) -> Universe:
    return Universe(size, seed, attention_rate, epoch, not_found_pct)


def universe_of(cfg: FakeConfig) -> Universe | None:
    """The universe a server with ``cfg`` serves (None without ``universe``): the same object
    in the same process, so a test's truth and the server share its built days."""
    if cfg.universe is None:
        return None
    return universe_for(cfg.universe, cfg.seed, cfg.attention_rate, cfg.universe_epoch, cfg.not_found_pct)
