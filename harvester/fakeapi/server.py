"""The aiohttp application: keys, limits, pauses, faults and routing, and how to run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from harvester.fakeapi.bodies import (
    CITATION_TIMEFRAMES,
    _by_altmetric_id,
    _counts_bytes,
    _digest,
    _dumps,
    _fetch_bytes,
    _filter_fetch,
    _remember_origin,
    _split_list,
    _unit,
)
from harvester.fakeapi.config import ID_TYPES, UNLIMITED_LIMIT, FakeConfig, Stats
from harvester.fakeapi.evolution import _evolved
from harvester.fakeapi.listings import _day_listing, _filter_key
from harvester.fakeapi.universe import Universe, universe_of

logger = logging.getLogger(__name__)


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
        self.faulty = any(r > 0 for r in (cfg.error_rate, cfg.reset_rate, cfg.truncate_rate, cfg.html_rate, cfg.slow_rate))
        self.hour_limit = cfg.per_hour if cfg.per_hour is not None else UNLIMITED_LIMIT
        self.day_limit = cfg.per_day if cfg.per_day is not None else UNLIMITED_LIMIT
        self.not_found_pct = float(cfg.not_found_pct)
        self.admitted = 0  # requests past auth, for pause_after
        self.pause_until: float | None = None
        # (endpoint, id_type, identifier) -> (the day it was built for, (status, body, content type)):
        # filled only by POST /_fake/prebuild (FakeConfig.prebuild), unbounded, emptied on request.
        self.prebuilt: dict[tuple[str, str, str], tuple[int | None, tuple[int, bytes, str]]] = {}
        self.universe: Universe | None = universe_of(cfg)

    def day(self) -> int | None:
        """The UTC day number the bodies are on, or None when they do not evolve."""
        if self.cfg.evolve or self.universe is not None:
            return int(self.cfg.clock() // 86_400)
        return None

    def evolve_day(self) -> int | None:
        """The day of evolve's growth (outputs outside the universe), or None without evolve."""
        return self.day() if self.cfg.evolve else None

    def universe_index(self, id_type: str, identifier: str) -> int | None:
        """The universe index of the output an id names, or None (no universe, or not in it)."""
        if self.universe is None or id_type != "doi":
            return None
        return self.universe.index(identifier)

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
    b"<!DOCTYPE html><html><head><title>Down for maintenance</title></head><body><h1>We'll be back shortly</h1></body></html>"
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


def _route(st: _State, endpoint: str, parts: list[str], query: Mapping[str, str]) -> tuple[int, bytes, str]:
    """(status, body, content type) for a request that passed auth and rate limits."""
    if endpoint == "citations":
        return _citations(st, parts, query)
    if len(parts) < 2 or not parts[1]:
        return 404, _NOT_FOUND, "text/plain"
    id_type = unquote(parts[0])
    identifier = unquote("/".join(parts[1:]))
    if id_type not in ID_TYPES:
        return 400, f"Bad Request: unknown identifier type {id_type!r}".encode(), "text/plain"
    if st.prebuilt and (endpoint == "counts" or not _FILTERS.intersection(query)):
        hit = st.prebuilt.get((endpoint, id_type, identifier))
        if hit is not None and hit[0] == st.day():
            st.stats.prebuilt_hits += 1
            return hit[1]
    return _route_id(st, endpoint, id_type, identifier, query)


# Query parameters that change a Fetch body: such a request is never answered from the prebuilt cache.
_FILTERS = frozenset(("include_sources", "exclude_sources", "include_sections"))


def _route_id(st: _State, endpoint: str, id_type: str, identifier: str, query: Mapping[str, str]) -> tuple[int, bytes, str]:
    """(status, body, content type) for one id of a known type on the counts or fetch endpoint."""
    if "badrequest" in identifier.lower():
        # A scripted trigger: the real API answers 400 to identifiers it cannot parse.
        return 400, f"Bad Request: invalid {id_type} {identifier!r}".encode(), "text/plain"
    if "servererror" in identifier.lower():
        # A scripted trigger: one id the server always fails on (while the rest work).
        return 500, b"Internal Server Error", "text/plain"
    day = st.evolve_day()
    if id_type == "id":
        # The output that was given this altmetric id, as the real API answers it (the harvester
        # refreshes outputs without a DOI so); looked up before the body caches, which key by id.
        id_type, identifier = _by_altmetric_id(identifier)
    # A universe output follows the attention model (docs/fakeapi.md), whatever evolve says.
    u_index = st.universe_index(id_type, identifier)
    if endpoint == "counts":
        body = _counts_bytes(id_type, identifier, st.not_found_pct)
        if body is None:
            return 404, _NOT_FOUND, "text/plain"
        if u_index is not None and st.universe is not None:
            body = st.universe.evolve_bytes("counts", u_index, body, int(st.cfg.clock() // 86_400))
        elif day is not None:
            body = _merged(identifier, _evolved("counts", body, day), day)
        return 200, _scripted("counts", identifier, body), "application/json"
    body = _fetch_bytes(id_type, identifier, st.not_found_pct)
    if body is None:
        return 404, _NOT_FOUND, "text/plain"
    if u_index is not None and st.universe is not None:
        body = st.universe.evolve_bytes("fetch", u_index, body, int(st.cfg.clock() // 86_400))
    elif day is not None:
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
    if st.universe is not None:
        return _universe_citations(st, st.universe, timeframe, filters, page, num)
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
    q: dict[str, Any] = {"total": len(listing), "page": page, "num_results": num, "timeframe": timeframe}
    q.update(filters)
    return 200, _dumps({"query": q, "results": results}), "application/json"


def _universe_citations(
    st: _State, u: Universe, timeframe: str, filters: tuple[tuple[str, str], ...], page: int, num: int
) -> tuple[int, bytes, str]:
    """A page of the universe's listing on the server's day: whole Counts bodies of that day."""
    faults = st.cfg.listing_faults
    if faults is not None and page in faults.fail_pages:
        return 500, b"Internal Server Error (listing_faults)", "text/plain"
    day = int(st.cfg.clock() // 86_400)
    try:
        listing = u.listing_indices(timeframe, filters, day)
    except ValueError as e:
        return 400, f"Bad Request: {e}".encode(), "text/plain"
    start = (page - 1) * num
    if start >= len(listing):
        return 404, _NOT_FOUND, "text/plain"
    results = []
    for i in listing[start : start + num]:
        # Through the same cache and origin registry as a Counts request, so an `id` lookup of
        # a listed output's altmetric_id names it.
        raw = _counts_bytes("doi", u.doi(i), st.not_found_pct)
        assert raw is not None  # universe DOIs always exist
        results.append(u.evolve_bytes("counts", i, raw, day))
    total = len(listing)
    if faults is not None and faults.total_shift_from is not None and page >= faults.total_shift_from:
        total += 1  # as if an output joined the listing while it was read
    q: dict[str, Any] = {"total": total, "page": page, "num_results": num, "timeframe": timeframe}
    q.update(filters)
    # Spliced rather than re-encoded: each result is already the Counts body's bytes.
    return 200, _dumps({"query": q, "results": []})[:-2] + b",".join(results) + b"]}", "application/json"


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
        return _text(401, "Unauthorized: an API key is required (pass ?key=...)", st.limit_headers(None))
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
            fault_key = path + "?" + "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k != "key")
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
                return web.Response(status=status, body=body, content_type=ctype, headers=st.limit_headers(ks, endpoint))
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
        return web.Response(status=status, body=body, content_type=ctype, headers=st.limit_headers(ks, endpoint))
    finally:
        if status not in (200, 404):
            if ks.hour_idx == hour_idx:
                ks.hour_used -= 1
            if ks.day_idx == day_idx:
                ks.day_used -= 1


async def _stats_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATS].as_dict())


_NO_QUERY: Mapping[str, str] = {}


def prebuild(app: web.Application, endpoint: str, id_type: str, identifiers: Iterable[str]) -> tuple[int, int]:
    """Build and encode now what ``GET /v1[/fetch]/{id_type}/{identifier}`` answers (200 or 404,
    without a filtering query), and keep it: those requests are then answered by a dict lookup,
    the same bytes. For benchmarks, so that the client, not the fake, is what they measure.

    ``identifier`` is the id as the request names it once percent-decoded. Returns (ids built,
    bytes held by the whole cache). Altmetric-id lookups (``id``) are not prebuilt: what they
    name depends on the requests seen before.
    """
    st = app[_STATE]
    if endpoint not in ("counts", "fetch"):
        raise ValueError(f"endpoint must be counts or fetch, not {endpoint!r}")
    if id_type not in ID_TYPES or id_type == "id":
        raise ValueError(f"cannot prebuild ids of type {id_type!r}")
    day = st.day()
    built = 0
    for identifier in identifiers:
        st.prebuilt[(endpoint, id_type, identifier)] = (day, _route_id(st, endpoint, id_type, identifier, _NO_QUERY))
        built += 1
    return built, sum(len(answer[1]) for _, answer in st.prebuilt.values())


def clear_prebuilt(app: web.Application) -> None:
    """Forget every prebuilt answer."""
    app[_STATE].prebuilt.clear()


async def _prebuild_handler(request: web.Request) -> web.Response:
    """POST /_fake/prebuild (FakeConfig.prebuild only), a JSON object:

    ``{"endpoint": "counts" | "fetch", "id_type": "doi", "ids": [...]}``, or instead of ``ids``
    ``"prefix"`` and ``"count"`` (ids prefix + str(i) for i in range(start, start + count), each
    number zero-padded to ``"width"`` digits, default 0), and ``"clear": true`` to forget what
    was built before. Answers ``{"built", "entries", "bytes", "seconds"}``. DELETE forgets all.
    """
    app = request.app
    if request.method == "DELETE":
        clear_prebuilt(app)
        return web.json_response({"entries": 0})
    try:
        spec = await request.json()
        if not isinstance(spec, dict):
            raise ValueError("a JSON object is expected")
        endpoint = str(spec.get("endpoint", "counts"))
        id_type = str(spec.get("id_type", "doi"))
        if "ids" in spec:
            ids = [str(i) for i in spec["ids"]]
        else:
            prefix, count = str(spec["prefix"]), int(spec["count"])
            start, width = int(spec.get("start", 0)), int(spec.get("width", 0))
            ids = [f"{prefix}{i:0{width}d}" for i in range(start, start + count)]
        if spec.get("clear"):
            clear_prebuilt(app)
        t0 = time.perf_counter()
        built, size = prebuild(app, endpoint, id_type, ids)
    except (ValueError, KeyError, TypeError) as e:
        return web.json_response({"error": str(e)}, status=400)
    return web.json_response(
        {"built": built, "entries": len(app[_STATE].prebuilt), "bytes": size, "seconds": round(time.perf_counter() - t0, 3)}
    )


def make_app(cfg: FakeConfig) -> web.Application:
    """The fake API as an aiohttp application; :func:`app_stats` gives its Stats."""
    app = web.Application()
    stats = Stats()
    app[_STATS] = stats
    app[_STATE] = _State(cfg, stats)
    app.router.add_get("/_stats", _stats_handler)
    if cfg.prebuild:
        app.router.add_post("/_fake/prebuild", _prebuild_handler)
        app.router.add_delete("/_fake/prebuild", _prebuild_handler)
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
def serve_in_thread(cfg: FakeConfig, port: int = 0) -> Iterator[FakeServer]:
    """Run the fake API on its own event loop in a daemon thread, for callers that are not async.

    ``port`` 0 picks a free port; a given one lets a test replace a server with another at the same URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-api", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(cfg, port=port), loop).result(timeout=30)
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


def run(cfg: FakeConfig, host: str = "127.0.0.1", port: int = 8787, announce: Callable[[str], None] | None = None) -> None:
    """Serve the fake until Ctrl-C or SIGTERM (blocking; for ``harvester mock-api``).

    ``announce`` receives the line that says where it listens (default: logged at INFO).
    """
    asyncio.run(_serve_forever(cfg, host, port, announce))
