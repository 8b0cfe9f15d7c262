"""The fake Altmetric API over real HTTP on 127.0.0.1: status codes, headers, limits, faults,
served samples and body shapes. The harvester's own tests trust these behaviours."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import aiohttp
import pytest
from yarl import URL

from harvester.fakeapi import (
    EVOLVE_EPOCH_DAY,
    HISTORY_TIMEFRAMES,
    FakeConfig,
    FakeServer,
    citation_listing,
    counts_body,
    fetch_body,
    iter_sample_files,
    start,
)

KEY = "demo-key"
LIMIT_HEADERS = (
    "X-HourlyRateLimit-Limit",
    "X-HourlyRateLimit-Remaining",
    "X-DailyRateLimit-Limit",
    "X-DailyRateLimit-Remaining",
)


@asynccontextmanager
async def serve(
    cfg: FakeConfig | None = None,
) -> AsyncIterator[tuple[FakeServer, aiohttp.ClientSession]]:
    server = await start(cfg or FakeConfig())
    try:
        async with aiohttp.ClientSession() as session:
            yield server, session
    finally:
        await server.close()


def api(server: FakeServer, path: str, key: str | None = KEY, **params: str | int) -> URL:
    """A URL under the fake's /v1, with ``path`` sent exactly as written (encoded=True)."""
    query = dict(params)
    if key is not None:
        query["key"] = key
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return URL(f"{server.url}{path}" + (f"?{qs}" if qs else ""), encoded=True)


async def get(session: aiohttp.ClientSession, url: URL) -> tuple[int, bytes, dict[str, str]]:
    async with session.get(url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


class FakeClock:
    """An injectable clock for the quota windows and the token bucket."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _utc(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# ---- auth and tiers ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_auth_statuses_and_counts_only_tier() -> None:
    async with serve() as (server, s):
        status, body, headers = await get(s, api(server, "/doi/10.1038/abc", key=None))
        assert status == 401
        assert headers["Content-Type"].startswith("text/plain")
        assert all(h in headers for h in LIMIT_HEADERS)

        status, body, headers = await get(s, api(server, "/doi/10.1038/abc", key="nope"))
        assert status == 403 and b"not valid" in body
        assert headers["Content-Type"].startswith("text/plain")

        only = "counts-only-key"
        for path in ("/fetch/doi/10.1038/abc", "/citations/1w"):
            status, body, _ = await get(s, api(server, path, key=only))
            assert status == 403, path
            assert b"tier" in body
        status, _, _ = await get(s, api(server, "/doi/10.1038/abc", key=only))
        assert status in (200, 404)
        status, _, _ = await get(s, api(server, "/citations/1w", key=KEY))
        assert status == 200


# ---- counts -----------------------------------------------------------------------------------


def _found(body: dict[str, Any] | None) -> dict[str, Any]:
    """A body the fake serves (None would be its 404)."""
    assert body is not None
    return body


def _first_found(prefix: str, pred: Callable[[dict[str, Any]], bool] = lambda b: True) -> str:
    for i in range(5000):
        doi = f"{prefix}{i}"
        body = counts_body("doi", doi)
        if body is not None and pred(body):
            return doi
    raise AssertionError("no DOI matched")


@pytest.mark.asyncio
async def test_counts_shape_and_determinism() -> None:
    doi = _first_found("10.5555/shape.", lambda b: b["cited_by_posts_count"] > 0 and "context" in b)
    async with serve() as (server, s):
        status, raw1, headers = await get(s, api(server, f"/doi/{doi}"))
        status2, raw2, _ = await get(s, api(server, f"/doi/{doi}"))
    assert status == status2 == 200
    assert headers["Content-Type"].startswith("application/json")
    assert raw1 == raw2
    body = json.loads(raw1)
    assert body == counts_body("doi", doi)
    assert body["doi"] == doi
    assert isinstance(body["altmetric_id"], int) and 0 < body["altmetric_id"] < 2**40
    assert list(body["history"]) == list(HISTORY_TIMEFRAMES)
    assert set(body["context"]) == {"all", "journal", "similar_age_3m", "similar_age_journal_3m"}
    for k in (
        "title",
        "journal",
        "issns",
        "type",
        "score",
        "url",
        "details_url",
        "images",
        "published_on",
        "added_on",
        "last_updated",
        "readers",
        "readers_count",
    ):
        assert k in body, k
    per_source = {
        k: v for k, v in body.items() if k.startswith("cited_by_") and k not in ("cited_by_posts_count", "cited_by_accounts_count")
    }
    assert per_source and all(v > 0 for v in per_source.values())  # zeros are left out
    assert body["cited_by_accounts_count"] == sum(per_source.values())
    assert body["cited_by_posts_count"] >= body["cited_by_accounts_count"]
    assert isinstance(body["published_on"], int)


def test_counts_quirks_across_ids() -> None:
    bodies = [b for i in range(600) if (b := counts_body("doi", f"10.5555/q{i}")) is not None]
    readers_types = {type(b["readers"]["mendeley"]) for b in bodies}
    assert readers_types == {int, str}
    assert any("context" not in b for b in bodies)
    assert any("cited_by_bluesky_count" in b for b in bodies)
    for b in bodies:
        for v in b["readers"].values():
            int(v)  # numeric, whether int or string

    pmid = next(str(n) for n in range(1000, 2000) if counts_body("pmid", str(n)) is not None)
    assert _found(counts_body("pmid", pmid))["pmid"] == pmid
    isbn = next(f"97800000{n:05d}" for n in range(2000) if counts_body("isbn", f"97800000{n:05d}"))
    assert _found(counts_body("isbn", isbn))["isbns"] == [isbn]
    handle = next(f"10986/{n}" for n in range(2000) if counts_body("handle", f"10986/{n}"))
    assert _found(counts_body("handle", handle))["handles"] == [handle]
    aid = next(str(n) for n in range(100, 2000) if counts_body("id", str(n)))
    assert _found(counts_body("id", aid))["altmetric_id"] == int(aid)


def test_bogus_doi_returns_a_different_doi() -> None:
    body = counts_body("doi", "10.1038/bogus-123")
    assert body is not None and body["doi"] != "10.1038/bogus-123"
    assert counts_body("doi", "10.1038/bogus-123") == body


@pytest.mark.asyncio
async def test_not_found_share_is_about_15_pct() -> None:
    dois = [f"10.7777/nf.{i}" for i in range(1000)]
    async with serve() as (server, s):
        results = await asyncio.gather(*(get(s, api(server, f"/doi/{d}")) for d in dois))
    missing = [d for d, (st, _, _) in zip(dois, results) if st == 404]
    assert 0.10 <= len(missing) / len(dois) <= 0.20
    assert all(body == b"Not Found" for st, body, _ in results if st == 404)
    assert all(st in (200, 404) for st, _, _ in results)
    # Deterministic per id, and the same on counts and fetch.
    assert {d for d in dois if counts_body("doi", d) is None} == set(missing)
    assert all(fetch_body("doi", d) is None for d in missing[:20])


@pytest.mark.asyncio
async def test_percent_encoded_and_raw_dois_are_the_same_id() -> None:
    doi = "10.1000/a#b?c%d;e[f]<g>"
    encoded = "10.1000/a%23b%3Fc%25d%3Be%5Bf%5D%3Cg%3E"
    plain = "10.1000/xy;z[1]"
    async with serve(FakeConfig(not_found_pct=0)) as (server, s):
        st1, b1, _ = await get(s, api(server, f"/doi/{encoded}"))
        st2, b2, _ = await get(s, api(server, "/doi/10.1000/A%23B%3FC%25D%3BE%5BF%5D%3CG%3E"))
        st3, b3, _ = await get(s, api(server, f"/doi/{plain}"))
        st4, b4, _ = await get(s, api(server, "/doi/10.1000/xy%3Bz%5B1%5D"))
        st5, b5, _ = await get(s, api(server, "/doi/10.1000/XY;Z[1]"))
        stats = server.stats
    assert st1 == st2 == st3 == st4 == st5 == 200
    assert b1 == b2 and json.loads(b1)["doi"] == doi
    assert b3 == b4 == b5 and json.loads(b3)["doi"] == plain
    assert json.loads(b1) == counts_body("doi", doi, not_found_pct=0)
    assert stats.per_path[f"/v1/doi/{plain}"] == 2  # raw and encoded count as one path


# ---- rate limits --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rate_limit_headers_on_every_status() -> None:
    clock = FakeClock(_utc(2024, 5, 1, 10, 0, 0))
    cfg = FakeConfig(per_second=1.0, burst=1, per_hour=100, clock=clock)
    found = _first_found("10.4444/h.")
    missing = next(f"10.4444/m.{i}" for i in range(500) if counts_body("doi", f"10.4444/m.{i}") is None)
    async with serve(cfg) as (server, s):
        seen = {}
        st, _, h = await get(s, api(server, f"/doi/{found}"))
        seen[st] = h
        clock.now += 1
        st, _, h = await get(s, api(server, f"/doi/{missing}"))
        seen[st] = h
        st, _, h = await get(s, api(server, f"/doi/{found}"))  # same instant: bucket empty
        seen[st] = h
        st, _, h = await get(s, api(server, f"/doi/{found}", key=None))
        seen[st] = h
    assert set(seen) == {200, 404, 429, 401}
    for status, headers in seen.items():
        assert all(k in headers for k in LIMIT_HEADERS), status
    assert seen[200]["X-HourlyRateLimit-Limit"] == "100"
    assert seen[200]["X-HourlyRateLimit-Remaining"] == "99"
    assert seen[404]["X-HourlyRateLimit-Remaining"] == "98"  # 404s use up the window
    assert seen[429]["X-HourlyRateLimit-Remaining"] == "98"  # 429s do not
    assert int(seen[200]["X-DailyRateLimit-Limit"]) >= 1_000_000  # unlimited: a large limit


@pytest.mark.asyncio
async def test_token_bucket_answers_429_with_retry_after() -> None:
    clock = FakeClock(1_000_000.0)
    cfg = FakeConfig(per_second=2.0, burst=3, not_found_pct=0, clock=clock)
    async with serve(cfg) as (server, s):
        statuses = [(await get(s, api(server, f"/doi/10.1/b{i}")))[0] for i in range(3)]
        assert statuses == [200, 200, 200]  # the burst
        st, body, headers = await get(s, api(server, "/doi/10.1/b3"))
        assert st == 429 and int(headers["Retry-After"]) >= 1
        clock.now += 0.5  # one token at 2/s
        assert (await get(s, api(server, "/doi/10.1/b3")))[0] == 200
        assert (await get(s, api(server, "/doi/10.1/b4")))[0] == 429
        # Keys have their own buckets.
        other = FakeConfig(keys=("k1", "k2"), per_second=1.0, clock=clock)
    async with serve(other) as (server, s):
        assert (await get(s, api(server, "/doi/10.1/c", key="k1")))[0] in (200, 404)
        assert (await get(s, api(server, "/doi/10.1/c", key="k1")))[0] == 429
        assert (await get(s, api(server, "/doi/10.1/c", key="k2")))[0] in (200, 404)
        assert server.stats.rate_limited == 1


@pytest.mark.asyncio
async def test_daily_quota_429_until_utc_midnight() -> None:
    clock = FakeClock(_utc(2024, 1, 1, 23, 0, 0))
    cfg = FakeConfig(per_day=3, clock=clock)
    async with serve(cfg) as (server, s):
        remaining = []
        for i in range(3):
            st, _, h = await get(s, api(server, f"/doi/10.2/d{i}"))
            assert st in (200, 404)
            remaining.append(h["X-DailyRateLimit-Remaining"])
        assert remaining == ["2", "1", "0"]
        st, body, h = await get(s, api(server, "/doi/10.2/d3"))
        assert st == 429
        assert h["X-DailyRateLimit-Remaining"] == "0"
        assert h["X-DailyRateLimit-Limit"] == "3"
        assert int(h["Retry-After"]) == 3600
        # 401/403 do not use up the window either.
        assert (await get(s, api(server, "/doi/10.2/d3", key=None)))[0] == 401
        clock.now = _utc(2024, 1, 2, 0, 0, 1)
        st, _, h = await get(s, api(server, "/doi/10.2/d3"))
        assert st in (200, 404)
        assert h["X-DailyRateLimit-Remaining"] == "2"


@pytest.mark.asyncio
async def test_hourly_quota_429_until_next_hour() -> None:
    clock = FakeClock(_utc(2024, 1, 1, 10, 59, 0))
    async with serve(FakeConfig(per_hour=1, clock=clock)) as (server, s):
        assert (await get(s, api(server, "/doi/10.2/h0")))[0] in (200, 404)
        st, _, h = await get(s, api(server, "/doi/10.2/h1"))
        assert st == 429 and h["X-HourlyRateLimit-Remaining"] == "0"
        assert int(h["Retry-After"]) == 60
        clock.now += 60
        assert (await get(s, api(server, "/doi/10.2/h1")))[0] in (200, 404)


# ---- faults ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_faults_at_rate_one() -> None:
    doi = _first_found("10.3333/f.")
    async with serve(FakeConfig(error_rate=1.0)) as (server, s):
        st, body, h = await get(s, api(server, f"/doi/{doi}"))
        assert st in (500, 502, 503) and body
        assert all(k in h for k in LIMIT_HEADERS)
        assert server.stats.faults["error"] == 1

    async with serve(FakeConfig(reset_rate=1.0)) as (server, s):
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(s, api(server, f"/doi/{doi}"))
        # aiohttp (3.14) silently retries an idempotent request once after a disconnect.
        assert server.stats.faults["reset"] in (1, 2)
        assert 200 not in server.stats.by_status
        # Faults come after auth: a request without a key is still answered.
        assert (await get(s, api(server, f"/doi/{doi}", key=None)))[0] == 401

    async with serve(FakeConfig(truncate_rate=1.0)) as (server, s):
        st, body, h = await get(s, api(server, f"/doi/{doi}"))
        assert st == 200 and h["Content-Type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        full = json.dumps(counts_body("doi", doi), separators=(",", ":"), ensure_ascii=False)
        assert full.encode().startswith(body) and len(body) == len(full.encode()) // 2

    async with serve(FakeConfig(slow_rate=1.0, slow_seconds=0.3)) as (server, s):
        t0 = time.monotonic()
        st, _, _ = await get(s, api(server, f"/doi/{doi}"))
        assert st == 200 and time.monotonic() - t0 >= 0.3


async def _outcomes(cfg: FakeConfig, paths: list[str]) -> list[str]:
    out = []
    async with serve(cfg) as (server, s):
        for p in paths:
            try:
                st, body, _ = await get(s, api(server, p))
                try:
                    if st == 200:
                        json.loads(body)
                    out.append(str(st))
                except ValueError:
                    out.append(f"{st}-bad")
            except aiohttp.ClientConnectionError:
                out.append("reset")
    return out


@pytest.mark.asyncio
async def test_faults_are_seeded_and_retries_eventually_succeed() -> None:
    # Each id asked five times in a row, like a client retrying.
    # (The client's own silent retry after a reset is one more attempt, the same in both runs.)
    paths = [f"/doi/10.9/r{i}" for i in range(40) for _ in range(5)]
    cfg = FakeConfig(seed=7, error_rate=0.3, reset_rate=0.15, truncate_rate=0.15, not_found_pct=0)
    first = await _outcomes(cfg, paths)
    second = await _outcomes(cfg, paths)
    assert first == second
    kinds = set(first)
    assert {"200", "reset", "200-bad"} <= kinds and kinds & {"500", "502", "503"}
    for i in range(40):
        assert "200" in first[i * 5 : i * 5 + 5]  # a retry gets through
    other = await _outcomes(FakeConfig(seed=8, error_rate=0.3, reset_rate=0.15, truncate_rate=0.15, not_found_pct=0), paths)
    assert other != first


# ---- real samples ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_samples_are_served_verbatim() -> None:
    samples = list(iter_sample_files())
    assert ("counts", "doi", "10.1038/news.2011.490", "counts_researchhub-pyliteral_10.1038-news.2011.490.json") in samples
    async with serve() as (server, s):
        for endpoint, id_type, ident, name in samples:
            prefix = "" if endpoint == "counts" else f"/{endpoint}"
            st, body, h = await get(s, api(server, f"{prefix}/{id_type}/{ident}"))
            assert st == 200, name
            assert h["Content-Type"].startswith("application/json")
            packaged = (resources.files("harvester") / "data" / name).read_bytes()
            assert body == packaged, name
    assert isinstance(_found(counts_body("doi", "10.1038/480426a"))["readers"]["mendeley"], str)
    assert _found(fetch_body("doi", "10.1038/NATURE.2014.14583"))["altmetric_id"] == 2068207
    # The other endpoint of a sample's DOI is synthetic but names the same output.
    assert _found(counts_body("doi", "10.1038/nature.2014.14583"))["altmetric_id"] == 2068207
    assert _found(fetch_body("doi", "10.1038/news.2011.490"))["altmetric_id"] == 241939


# ---- fetch ---------------------------------------------------------------------------------------------


def _find_fetch(pred: Callable[[dict[str, Any]], bool], prefix: str = "10.6666/f.") -> str:
    for i in range(3000):
        body = fetch_body("doi", f"{prefix}{i}")
        if body is not None and pred(body):
            return f"{prefix}{i}"
    raise AssertionError("no fetch body matched")


def test_fetch_quirks_appear() -> None:
    bodies = [b for i in range(400) if (b := fetch_body("doi", f"10.6666/q.{i}")) is not None]
    assert any(b["posts"] == [] for b in bodies)
    assert any(b["demographics"] == [] for b in bodies)
    assert any(b["altmetric_score"]["context_for_score"] is None for b in bodies)
    misc = [b for b in bodies if isinstance(b["posts"], dict) and "misc" in b["posts"]]
    assert misc and all("misc" not in b["counts"] for b in misc)
    for b in bodies:
        posts = b["posts"] if isinstance(b["posts"], dict) else {}
        assert b["counts"]["total"]["posts_count"] == sum(len(v) for v in posts.values())
        for src, entry in b["counts"].items():
            if src not in ("readers", "total", "downloads"):  # downloads: PMC views, no source (issue 17)
                assert len(posts[src]) == entry["posts_count"]
    policy = next(b for b in bodies if isinstance(b["posts"], dict) and "policy" in b["posts"])
    assert policy["posts"]["policy"][0]["source"]["geo"]["country"]


@pytest.mark.asyncio
async def test_fetch_shape_and_source_filters() -> None:
    doi = _find_fetch(
        lambda b: (
            isinstance(b["posts"], dict)
            and "twitter" in b["posts"]
            and len(b["posts"]) >= 2
            and b["altmetric_score"]["context_for_score"] is not None
        )
    )
    async with serve() as (server, s):
        st, raw, _ = await get(s, api(server, f"/fetch/doi/{doi}"))
        assert st == 200
        body = json.loads(raw)
        assert body == fetch_body("doi", doi)
        assert body["altmetric_id"] == _found(counts_body("doi", doi))["altmetric_id"]
        assert {"altmetric_id", "counts", "citation", "altmetric_score", "demographics", "posts", "score", "images"} <= set(body)
        assert body["citation"]["doi"] == doi
        datetime.fromisoformat(body["citation"]["first_seen_on"])
        ctx = body["altmetric_score"]["context_for_score"]
        assert set(ctx) == {"all", "this_journal", "similar_age_3m", "similar_age_this_journal_3m"}
        assert {
            "total_number_of_other_articles",
            "mean",
            "rank",
            "this_scored_higher_than_pct",
            "this_scored_higher_than",
            "rank_type",
            "sample_size",
            "percentile",
        } == set(ctx["all"])
        tweet = body["posts"]["twitter"][0]
        assert tweet["tweet_id"] and tweet["author"]["tweeter_id"]
        assert "followers" in tweet["author"] and "id_on_source" in tweet["author"]
        assert not {"title", "summary", "text"} & set(tweet)

        st, raw, _ = await get(s, api(server, f"/fetch/doi/{doi}", include_sources="twitter"))
        only = json.loads(raw)
        assert set(only["posts"]) == {"twitter"}
        assert set(only["counts"]) == {"readers", "total", "twitter"}
        assert only["counts"]["total"]["posts_count"] == len(only["posts"]["twitter"])

        st, raw, _ = await get(s, api(server, f"/fetch/doi/{doi}", exclude_sources="twitter"))
        assert "twitter" not in json.loads(raw)["counts"]

        st, raw, _ = await get(s, api(server, f"/fetch/doi/{doi}", include_sections="counts,citation", post_types="original_tweets"))
        assert set(json.loads(raw)) == {"altmetric_id", "counts", "citation"}


# ---- citations -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_citations_paging() -> None:
    async with serve() as (server, s):
        st, raw, _ = await get(s, api(server, "/citations/1w", num_results=99, doi_prefix="10.1038"))
        assert st == 200
        first = json.loads(raw)
        total = first["query"]["total"]
        assert 20 <= total <= 600
        assert first["query"]["page"] == 1 and first["query"]["doi_prefix"] == "10.1038"
        dois = [r["doi"] for r in first["results"]]
        page = 1
        while page * 99 < total:
            page += 1
            st, raw, _ = await get(s, api(server, "/citations/1w", num_results=99, page=page, doi_prefix="10.1038"))
            assert st == 200
            dois += [r["doi"] for r in json.loads(raw)["results"]]
        assert len(dois) == len(set(dois)) == total
        assert all(d.startswith("10.1038/") for d in dois)
        assert all(counts_body("doi", d) is not None for d in dois[:50])

        st, body, _ = await get(s, api(server, "/citations/1w", num_results=99, page=page + 1, doi_prefix="10.1038"))
        assert st == 404 and body == b"Not Found"

        # Stable per (timeframe, filters, rank); the default page size is 25.
        st, raw, _ = await get(s, api(server, "/citations/1w", doi_prefix="10.1038", page=2))
        again = json.loads(raw)
        assert [r["doi"] for r in again["results"]] == dois[25:50]

        assert (await get(s, api(server, "/citations/1w", num_results=100)))[0] == 400
        assert (await get(s, api(server, "/citations/1w", num_results=0)))[0] == 400
        assert (await get(s, api(server, "/citations/2w")))[0] == 400


@pytest.mark.asyncio
async def test_stats_endpoint() -> None:
    async with serve() as (server, s):
        await get(s, api(server, "/doi/10.1038/abc"))
        await get(s, api(server, "/doi/10.1038/abc"))
        async with s.get(server.url.removesuffix("/v1") + "/_stats") as resp:
            stats = await resp.json()
    assert stats["total"] == 2
    assert stats["per_path"] == {"/v1/doi/10.1038/abc": 2}
    assert sum(stats["by_status"].values()) == 2


# ---- attention that grows day by day (evolve) ----------------------------------------------------

DAY = 20_777  # 2026-11-19 UTC: 323 days after EVOLVE_EPOCH_DAY, so the movers have moved
# (path, query) pairs whose answers without evolve are pinned by OFF_DIGEST below.
PINNED: list[tuple[str, dict[str, str | int]]] = (
    [(f"/doi/10.5555/pin.{i}", {}) for i in range(40)]
    + [(f"/fetch/doi/10.5555/pin.{i}", {}) for i in range(8)]
    + [("/pmid/31000001", {}), ("/fetch/id/1270180", {}), ("/doi/10.1038/news.2011.490", {})]
    + [("/citations/1w", {"num_results": 99, "page": p, "doi_prefix": "10.1038"}) for p in (1, 2)]
    + [("/citations/1d", {"num_results": 50})]
)
# blake2b of every status and body above, as the fake served them before evolve existed. Off,
# evolve must not change one byte (benchmarks and the harvester's tests rely on it). A deliberate
# change of the synthetic data updates this digest, and says so in its commit.
# Changed for issue 17: about a third of the synthetic articles' Fetch bodies carry counts.downloads and citation.pmcid.
OFF_DIGEST = "814c68d13eb430e1ad34ba5c265e575c"


def _day_clock(day: int, seconds: float = 3_600.0) -> FakeClock:
    return FakeClock(day * 86_400 + seconds)


def _compact(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def _served(cfg: FakeConfig, requests: list[tuple[str, dict[str, str | int]]]) -> list[tuple[int, bytes]]:
    async with serve(cfg) as (server, s):
        # str values: api()'s own `key` parameter takes str | None.
        return [(st, body) for st, body, _ in [await get(s, api(server, p, **{k: str(v) for k, v in q.items()})) for p, q in requests]]


def _digest_of(answers: list[tuple[int, bytes]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for status, body in answers:
        h.update(f"{status}:{len(body)}:".encode() + body)
    return h.hexdigest()


@pytest.mark.asyncio
async def test_evolve_off_serves_the_same_bytes_whatever_the_day() -> None:
    today = await _served(FakeConfig(), PINNED)
    assert _digest_of(today) == OFF_DIGEST
    assert {st for st, _ in today} <= {200, 404} and 200 in {st for st, _ in today}
    # Off, the clock's day changes nothing; on, nothing has grown on the epoch day itself.
    assert await _served(FakeConfig(clock=_day_clock(DAY + 400)), PINNED) == today
    bodies_only = [(p, q) for p, q in PINNED if not p.startswith("/citations")]
    on_epoch = await _served(FakeConfig(evolve=True, clock=_day_clock(EVOLVE_EPOCH_DAY)), bodies_only)
    assert on_epoch == [a for (p, _), a in zip(PINNED, today) if not p.startswith("/citations")]


@pytest.mark.asyncio
async def test_evolve_same_day_same_bytes() -> None:
    requests: list[tuple[str, dict[str, str | int]]] = [
        ("/doi/10.5555/pin.0", {}),
        ("/fetch/doi/10.5555/pin.0", {}),
        ("/citations/1d", {"num_results": 30}),
    ]
    early = await _served(FakeConfig(evolve=True, clock=_day_clock(DAY, 1.0)), requests)
    late = await _served(FakeConfig(evolve=True, clock=_day_clock(DAY, 86_399.0)), requests)
    assert early == late
    assert [json.loads(b) for _, b in early[:2]] == [
        counts_body("doi", "10.5555/pin.0", day=DAY),
        fetch_body("doi", "10.5555/pin.0", day=DAY),
    ]


def _grow_dois() -> list[str]:
    return [f"10.5555/grow.{i:03d}" for i in range(80)]


@pytest.mark.asyncio
async def test_evolve_grows_attention_day_by_day() -> None:
    clock = _day_clock(DAY)
    today: dict[str, dict[str, Any]] = {}
    fetched: dict[str, dict[str, Any]] = {}
    async with serve(FakeConfig(evolve=True, clock=clock)) as (server, s):
        for doi in _grow_dois():
            st, raw, _ = await get(s, api(server, f"/doi/{doi}"))
            if st == 200:
                today[doi] = json.loads(raw)
                assert today[doi] == counts_body("doi", doi, day=DAY)
                fetched[doi] = json.loads((await get(s, api(server, f"/fetch/doi/{doi}")))[1])
                assert fetched[doi] == fetch_body("doi", doi, day=DAY)
        clock.now += 86_400
        grew = same = 0
        for doi, before in today.items():
            after = json.loads((await get(s, api(server, f"/doi/{doi}")))[1])
            fetch_after = json.loads((await get(s, api(server, f"/fetch/doi/{doi}")))[1])
            assert after["score"] >= before["score"]
            gained = round(4 * (after["score"] - before["score"]))  # a quarter point a tweet
            assert after["score"] == pytest.approx(before["score"] + gained / 4, abs=1e-9)
            for key in ("cited_by_tweeters_count", "cited_by_posts_count", "cited_by_accounts_count"):
                assert after.get(key, 0) - before.get(key, 0) == gained, key
            # Fetch tells the same story; its posts list does not grow.
            assert fetch_after["score"] == fetch_after["altmetric_score"]["score"] == after["score"]
            assert (fetch_after["counts"]["total"]["posts_count"] - fetched[doi]["counts"]["total"]["posts_count"]) == gained
            assert fetch_after["posts"] == fetched[doi]["posts"]
            grew += gained > 0
            same += gained == 0
        assert grew > 10 and same > 3


def test_evolve_history_holds_the_score_gained_over_each_timeframe() -> None:
    """The history's values are gains over the timeframe (as in the real samples: an old output
    shows 0s), so they grow by what the output gained in that window; ``at`` is the score."""
    checked = 0
    for doi in _grow_dois():
        base = counts_body("doi", doi)
        if base is None:
            continue
        on = {d: counts_body("doi", doi, day=d) for d in (DAY + 1, DAY, DAY - 6, DAY - 29)}
        now = on[DAY + 1]
        assert now is not None and now["history"]["at"] == now["score"]
        assert list(now["history"]) == list(base["history"])
        for tf, back in (("1d", DAY), ("1w", DAY - 6), ("1m", DAY - 29)):
            then = on[back]
            assert then is not None
            gained = now["score"] - then["score"]
            assert now["history"][tf] == pytest.approx(base["history"][tf] + gained, abs=1e-6), (doi, tf)
        values = [now["history"][tf] for tf in HISTORY_TIMEFRAMES]
        assert values == sorted(values)  # 1d <= 2d <= ... <= 1y <= at
        fetched = fetch_body("doi", doi, day=DAY + 1)
        assert fetched is not None
        history = fetched["altmetric_score"]["score_history"]
        assert {tf: history[tf] for tf in now["history"]} == now["history"]
        checked += now["score"] > base["score"]
    assert checked > 10


def test_evolve_outputs_that_do_not_move_keep_their_bytes() -> None:
    still = [d for d in _grow_dois() if (b := counts_body("doi", d)) is not None and counts_body("doi", d, day=DAY + 30) == b]
    assert len(still) > 3
    for doi in still:
        # No zero counts appear (the real API leaves them out), in Counts or Fetch.
        assert _compact(counts_body("doi", doi, day=DAY)) == _compact(counts_body("doi", doi))
        assert fetch_body("doi", doi, day=DAY) == fetch_body("doi", doi)


async def _whole_listing(s: aiohttp.ClientSession, server: FakeServer, timeframe: str, **params: str) -> tuple[int, list[dict[str, Any]]]:
    """(query.total, every result) of a Citations query, paged as the docs say; the page after
    the last answers 404."""
    results: list[dict[str, Any]] = []
    page, total = 0, 1
    while page * 99 < total:
        page += 1
        st, raw, _ = await get(s, api(server, f"/citations/{timeframe}", num_results=99, page=page, **params))
        assert st == 200
        body = json.loads(raw)
        total = body["query"]["total"]
        results += body["results"]
    st, raw, _ = await get(s, api(server, f"/citations/{timeframe}", num_results=99, page=page + 1, **params))
    assert st == 404 and raw == b"Not Found"
    return total, results


@pytest.mark.asyncio
async def test_evolve_changes_the_citations_listing_daily() -> None:
    clock = _day_clock(DAY)
    listed: list[list[str]] = []
    async with serve(FakeConfig(evolve=True, clock=clock)) as (server, s):
        for day in (DAY, DAY + 1):
            for timeframe, filters in (("1d", {}), ("1w", {"doi_prefix": "10.1038"})):
                expected = citation_listing(timeframe, filters, day=day)
                total, results = await _whole_listing(s, server, timeframe, **filters)
                assert total == len(expected) == len(results)
                assert [r["doi"] for r in results] == expected
                assert all(r == counts_body("doi", r["doi"], day=day) for r in results)
                scores = [r["score"] for r in results]
                assert scores == sorted(scores, reverse=True)  # ranked by that day's score
                if timeframe == "1d":
                    listed.append(expected)
                    assert any(f".d{day}." in d for d in expected)  # some are new that day
            clock.now += 86_400
    first, second = set(listed[0]), set(listed[1])
    both = first & second
    # Most of a listing stays from one day to the next, some leaves, some is new.
    assert 0.4 * len(first) < len(both) < min(len(first), len(second))
    # Off (day None), the listing is the one of a server without evolve: the whole base listing.
    base = set(citation_listing("1d", {}))
    assert both <= base and not any(".d" in d.rpartition("/")[2] for d in base)


@pytest.mark.asyncio
async def test_an_altmetric_id_names_the_output_it_was_given_to() -> None:
    clock = _day_clock(DAY)
    async with serve(FakeConfig(evolve=True, clock=clock)) as (server, s):
        asked: list[tuple[str, str]] = []
        # Outputs first seen by DOI, and by PMID without a DOI (refreshed by id by the harvester).
        for i in range(40):
            st, raw, _ = await get(s, api(server, f"/doi/10.5555/byid.{i}"))
            if st == 200:
                asked.append(("doi", f"10.5555/byid.{i}"))
            st, raw, _ = await get(s, api(server, f"/pmid/{32_000_000 + i}"))
            if st == 200 and "doi" not in json.loads(raw):
                asked.append(("pmid", str(32_000_000 + i)))
        asked.append(("doi", "10.1038/news.2011.490"))  # a sample, served verbatim
        asked.append(("doi", "10.1038/bogus-byid"))  # answered with another output
        assert sum(t == "pmid" for t, _ in asked) >= 3
        for _ in range(2):  # today, and the next day as the output grew
            for id_type, ident in asked:
                st, by_asked, _ = await get(s, api(server, f"/{id_type}/{ident}"))
                aid = json.loads(by_asked)["altmetric_id"]
                st2, by_id, _ = await get(s, api(server, f"/id/{aid}"))
                assert st == st2 == 200 and by_id == by_asked, (id_type, ident)
                assert json.loads(by_id) == counts_body("id", str(aid), day=int(clock.now // 86_400))
                st, fetch_asked, _ = await get(s, api(server, f"/fetch/{id_type}/{ident}"))
                st2, fetch_by_id, _ = await get(s, api(server, f"/fetch/id/{aid}"))
                assert st == st2 == 200 and fetch_by_id == fetch_asked, (id_type, ident)
                assert json.loads(fetch_by_id)["altmetric_id"] == aid
            clock.now += 86_400
        # An altmetric id the fake never gave out still names an output of its own.
        st, raw, _ = await get(s, api(server, "/id/4242"))
        assert st == 404 or json.loads(raw)["altmetric_id"] == 4242


# ---- the prebuilt cache (FakeConfig.prebuild, for benchmarks) -----------------------------------

# A synthetic DOI, a 404, a real sample, a bogus DOI answered with another output, a scripted
# trigger, a percent-encoded DOI, and a handle: (path as sent, id as prebuilt).
PREBUILT_IDS: list[tuple[str, str, str]] = [
    ("doi", "10.5555/pre.0", "10.5555/pre.0"),
    ("doi", "10.5555/pre.1", "10.5555/pre.1"),
    ("doi", "10.1038/news.2011.498", "10.1038/news.2011.498"),
    ("doi", "10.1001/jama.2013.950", "10.1001/jama.2013.950"),
    ("doi", "10.5555/bogus-pre", "10.5555/bogus-pre"),
    ("doi", "10.5555/pre.nulbyte", "10.5555/pre.nulbyte"),
    ("doi", "10.5555%2Fpre.encoded", "10.5555/pre.encoded"),
    ("handle", "10012/pre", "10012/pre"),
]


async def _post_json(s: aiohttp.ClientSession, server: FakeServer, spec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with s.post(server.url.removesuffix("/v1") + "/_fake/prebuild", json=spec) as resp:
        if resp.content_type != "application/json":
            return resp.status, {"text": await resp.text()}
        return resp.status, await resp.json()


async def _stats(s: aiohttp.ClientSession, server: FakeServer) -> dict[str, Any]:
    async with s.get(server.url.removesuffix("/v1") + "/_stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


@pytest.mark.asyncio
async def test_prebuilt_answers_are_the_same_bytes() -> None:
    from harvester.fakeapi import bodies

    # 404s among the synthetic ids too, so that a prebuilt 404 is checked.
    dois = [f"10.5555/pre.{i}" for i in range(2, 40)]
    assert any(counts_body("doi", d) is None for d in dois)
    paths = [(t, sent) for t, sent, _ in PREBUILT_IDS] + [("doi", d) for d in dois]
    requests = [f"/{t}/{sent}" for t, sent in paths] + [f"/fetch/{t}/{sent}" for t, sent in paths]

    async def answers(server: FakeServer, s: aiohttp.ClientSession) -> list[tuple[int, bytes, str]]:
        out = []
        for path in requests:
            async with s.get(api(server, path)) as resp:
                out.append((resp.status, await resp.read(), resp.headers["Content-Type"]))
        return out

    bodies._counts_bytes.cache_clear()
    bodies._fetch_bytes.cache_clear()
    async with serve() as (server, s):
        plain = await answers(server, s)
    bodies._counts_bytes.cache_clear()
    bodies._fetch_bytes.cache_clear()
    async with serve(FakeConfig(prebuild=True)) as (server, s):
        for endpoint in ("counts", "fetch"):
            for id_type in ("doi", "handle"):
                ids = [decoded for t, _, decoded in PREBUILT_IDS if t == id_type]
                if id_type == "doi":
                    ids += dois
                status, built = await _post_json(s, server, {"endpoint": endpoint, "id_type": id_type, "ids": ids})
                assert status == 200 and built["built"] == len(ids)
        bodies._counts_bytes.cache_clear()  # what is served now comes from the prebuilt cache
        bodies._fetch_bytes.cache_clear()
        prebuilt = await answers(server, s)
        stats = await _stats(s, server)
        assert stats["prebuilt_hits"] == len(requests)
        assert bodies._counts_bytes.cache_info().currsize == bodies._fetch_bytes.cache_info().currsize == 0
        # A filtered Fetch is not served from the cache, and is what it would be without it.
        filtered = api(server, "/fetch/doi/10.5555/pre.0", include_sources="twitter")
        st, body, _ = await get(s, filtered)
        assert (await _stats(s, server))["prebuilt_hits"] == len(requests)
        # prefix + count, zero-padded, and clear; DELETE forgets everything.
        status, built = await _post_json(s, server, {"prefix": "10.5555/pre.", "count": 3, "start": 8, "width": 3, "clear": True})
        assert status == 200 and built["built"] == built["entries"] == 3
        assert (await get(s, api(server, "/doi/10.5555/pre.009")))[:2] == (200, bodies._dumps(counts_body("doi", "10.5555/pre.009")))
        assert (await _stats(s, server))["prebuilt_hits"] == len(requests) + 1
        assert (await _post_json(s, server, {"endpoint": "fetch", "id_type": "id", "ids": ["1"]}))[0] == 400
        assert (await _post_json(s, server, {"endpoint": "citations", "ids": ["1"]}))[0] == 400
        async with s.delete(server.url.removesuffix("/v1") + "/_fake/prebuild") as resp:
            assert resp.status == 200
    assert prebuilt == plain
    assert {st for st, _, _ in plain} == {200, 404}
    async with serve() as (server, s):
        assert (await get(s, filtered.with_host(server.host).with_port(server.port)))[:2] == (st, body)
        # Off (the default), the route does not exist.
        assert (await _post_json(s, server, {"ids": ["10.5555/pre.0"]}))[0] == 404


@pytest.mark.asyncio
async def test_prebuilt_answers_follow_the_day() -> None:
    clock = _day_clock(DAY)
    async with serve(FakeConfig(evolve=True, prebuild=True, clock=clock)) as (server, s):
        dois = [f"10.5555/grow.{i:03d}" for i in range(20)]
        assert (await _post_json(s, server, {"ids": dois}))[0] == 200
        clock.now += 86_400  # the next day: built for yesterday, so not served
        for doi in dois:
            st, raw, _ = await get(s, api(server, f"/doi/{doi}"))
            assert (st, json.loads(raw) if st == 200 else None) == (
                (404, None) if counts_body("doi", doi) is None else (200, counts_body("doi", doi, day=DAY + 1))
            )
        assert (await _stats(s, server))["prebuilt_hits"] == 0
