"""The fake's universe (FakeConfig.universe, docs/fakeapi.md): attention on some days and not
others, Citations listings that hold exactly the outputs with attention in their window, and the
truth a change-feed nightly is checked against. Pure functions first, then over real HTTP."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from typing import Any

import aiohttp
import pytest
from yarl import URL

from harvester.fakeapi import FakeConfig, FakeServer, start
from harvester.fakeapi.bodies import _JOURNALS, _profile
from harvester.fakeapi.universe import (
    Universe,
    _journal_index,
    universe_dois,
    universe_for,
    universe_of,
)

KEY = "demo-key"
SIZE = 20_000
EPOCH = 20_700  # 2026-09-04
DAY = EPOCH + 20  # the days the tests look at have three weeks of attention behind them


@pytest.fixture(scope="module")
def u() -> Universe:
    return universe_for(SIZE, epoch=EPOCH)


def _snapshot(body: dict[str, Any]) -> tuple[float, int, int, int]:
    return (body["score"], body["cited_by_posts_count"], body["cited_by_accounts_count"], body["readers_count"])


def _sample(u: Universe, day: int) -> list[int]:
    """Some quiet outputs and every output with attention on ``day`` or the day before."""
    return sorted(set(range(0, SIZE, 10)) | set(u.attended_indices(day)) | set(u.attended_indices(day - 1)))


def test_universe_dois_are_stable_and_exist(u: Universe) -> None:
    dois = universe_dois(500)
    assert dois == u.dois(500) == universe_dois(500, start=0)
    assert universe_dois(10, start=100) == dois[100:110]
    assert len(set(dois)) == 500
    assert all(u.index(d) == i for i, d in enumerate(dois))
    assert u.index(dois[3].upper()) == 3  # DOIs are case-insensitive
    assert u.index(f"10.1038/univ.{SIZE}") is None and u.index("10.1038/abc") is None
    assert all(u.counts_body(d, DAY) is not None for d in dois[:50])
    # Spread over the journals' prefixes; the body's journal is the one the filters see.
    assert len({d.partition("/")[0] for d in dois}) == len({j[4] for j in _JOURNALS})
    for d in dois[:200]:
        assert _JOURNALS[_journal_index(d)] == _profile("doi", d, d).journal


def test_unlisted_outputs_do_not_change_listed_ones_do(u: Universe) -> None:
    for day in (DAY, DAY + 1):
        listed = set(u.listing("1d", {}, day))
        assert listed == u.attended(day) and listed
        for i in _sample(u, day):
            doi = u.doi(i)
            now, before = u.truth(doi, day), u.truth(doi, day - 1)
            assert now is not None and before is not None
            if doi in listed:
                assert now.score != before.score and now.posts_count != before.posts_count, doi
            else:
                assert now[:3] == before[:3], doi
                body = u.counts_body(doi, day)
                assert body is not None and body["history"]["1d"] == 0


def test_score_drops_happen_and_are_listed(u: Universe) -> None:
    drops = []
    for day in range(EPOCH, DAY + 1):
        listed = set(u.listing("1d", {}, day))
        for i in u.attended_indices(day):
            doi = u.doi(i)
            now, before = u.truth(doi, day), u.truth(doi, day - 1)
            assert now is not None and before is not None
            if now.score < before.score:
                drops.append(doi)
                assert doi in listed and now.posts_count < before.posts_count
    total = sum(len(u.attended_indices(d)) for d in range(EPOCH, DAY + 1))
    assert 0 < len(drops) < 0.05 * total  # a few


def test_longer_windows_are_unions_of_days(u: Universe) -> None:
    days = {d: set(u.listing("1d", {}, d)) for d in range(EPOCH, DAY + 1)}
    for tf, n in (("2d", 2), ("6d", 6), ("1w", 7)):
        assert set(u.listing(tf, {}, DAY)) == set().union(*(days[d] for d in range(DAY - n + 1, DAY + 1))), tf
    # Windows are clipped at the epoch: nothing had attention before it.
    assert set(u.listing("1m", {}, DAY)) == set().union(*days.values())
    assert u.listing("1d", {}, EPOCH - 1) == [] and u.window("1m", DAY) == (EPOCH, DAY)
    assert len(u.listing("1w", {}, DAY)) < 7 * len(days[DAY])  # busy outputs are listed once


def test_listing_entries_are_that_days_counts_bodies_in_score_order(u: Universe) -> None:
    listed = u.listing("1w", {}, DAY)
    gains = []
    for doi in listed[:300]:
        body = u.counts_body(doi, DAY)
        truth = u.truth(doi, DAY)
        assert body is not None and truth is not None
        assert _snapshot(body) == tuple(truth)
        fetched = u.fetch_body(doi, DAY)
        assert fetched is not None
        assert fetched["score"] == fetched["altmetric_score"]["score"] == body["score"]
        assert fetched["counts"]["total"]["posts_count"] == body["cited_by_posts_count"]
        assert fetched["altmetric_score"]["score_history"]["1w"] == body["history"]["1w"]
        gains.append(body["history"]["1w"])
    assert gains == sorted(gains, reverse=True)  # order_by=score: the score gained in the window


def test_filters_filter(u: Universe) -> None:
    everything = u.listing("1w", {}, DAY)
    bodies = {d: u.counts_body(d, DAY) for d in everything}
    checks: list[tuple[dict[str, str], Any]] = [
        ({"doi_prefix": "10.1038"}, lambda b: b["doi"].startswith("10.1038/")),
        ({"issns": "0140-6736"}, lambda b: "0140-6736" in b["issns"]),
        ({"issns": "20452322,1932-6203"}, lambda b: {"2045-2322", "1932-6203"} & set(b["issns"])),
        ({"subjects": "medicine"}, lambda b: "medicine" in b["subjects"]),
        ({"cited_in": "news"}, lambda b: "cited_by_msm_count" in b),
        ({"cited_in": "reddit,blogs"}, lambda b: "cited_by_rdts_count" in b or "cited_by_feeds_count" in b),
        ({"doi_prefix": "10.1016", "subjects": "medicine"}, lambda b: b["doi"].startswith("10.1016/") and "medicine" in b["subjects"]),
    ]
    for filters, pred in checks:
        got = u.listing("1w", filters, DAY)
        assert got == [d for d in everything if pred(bodies[d])], filters
        assert 0 < len(got) < len(everything), filters
    assert u.listing("1w", {"cited_in": "pinterest"}, DAY) == []
    assert u.listing("1w", {"nlmid": "0410462"}, DAY) == []


def test_other_orders(u: Universe) -> None:
    orders: list[tuple[str, str]] = [
        ("pubdate", "published_on"),
        ("first_seen", "added_on"),
        ("at_score", "score"),
        ("readers", "readers_count"),
    ]
    for order, field in orders:
        listed = u.listing("1d", {"order_by": order}, DAY)
        assert set(listed) == u.attended(DAY)
        keys = [(u.counts_body(d, DAY) or {})[field] for d in listed]
        assert keys == sorted(keys, reverse=True), order
    with pytest.raises(ValueError):
        u.listing("1d", {"order_by": "bogus"}, DAY)


def test_readers_drift_without_attention(u: Universe) -> None:
    attended = u.attended(DAY)
    drifted = 0
    for i in range(0, SIZE, 7):
        doi = u.doi(i)
        if doi in attended:
            continue
        now, before = u.truth(doi, DAY), u.truth(doi, DAY - 1)
        assert now is not None and before is not None
        assert now.readers_count >= before.readers_count
        drifted += now.readers_count > before.readers_count
        if now.readers_count > before.readers_count and drifted == 1:
            body = u.counts_body(doi, DAY)
            assert body is not None and int(body["readers"]["mendeley"]) + int(body["readers"]["citeulike"]) == now.readers_count
    assert drifted > 50


def test_attention_has_a_heavy_tail_and_the_calibrated_rate(u: Universe) -> None:
    days = range(EPOCH, EPOCH + 60)
    per_output: Counter[int] = Counter()
    for d in days:
        today = u.attended_indices(d)
        assert 0.008 * SIZE < len(today) < 0.012 * SIZE  # ~1% a day (attention_rate)
        per_output.update(today)
    counts = sorted((per_output[i] for i in range(SIZE)), reverse=True)
    assert statistics.median(counts) == 0  # most outputs: no attention in two months
    busy = counts[: SIZE // 1000]  # the top 0.1%: attention on most days
    assert min(busy) > 0.5 * len(days)
    assert sum(counts[: SIZE // 50]) > 0.3 * sum(counts)  # 2% of outputs hold a third of the attention
    assert Counter(u.tier(i) for i in range(SIZE))[0] == SIZE // 1000


def test_series_equals_truth_day_by_day(u: Universe) -> None:
    for doi in u.listing("1w", {}, DAY)[:20] + u.dois(5):
        assert u.series(doi, DAY - 9, DAY) == [u.truth(doi, d) for d in range(DAY - 9, DAY + 1)]


def test_the_attention_rate_scales_the_listing() -> None:
    low = Universe(SIZE, attention_rate=0.002, epoch=EPOCH)
    assert 0.001 * SIZE < len(low.attended_indices(EPOCH)) < 0.003 * SIZE
    other_seed = Universe(SIZE, seed=7, epoch=EPOCH)
    assert other_seed.attended(EPOCH) != universe_for(SIZE, epoch=EPOCH).attended(EPOCH)
    assert universe_of(FakeConfig()) is None


# ---- over HTTP --------------------------------------------------------------------------------


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _api(server: FakeServer, path: str, **params: str | int) -> URL:
    qs = "&".join(f"{k}={v}" for k, v in {**params, "key": KEY}.items())
    return URL(f"{server.url}{path}?{qs}", encoded=True)


async def _get(s: aiohttp.ClientSession, url: URL) -> tuple[int, bytes]:
    async with s.get(url) as resp:
        return resp.status, await resp.read()


@pytest.mark.asyncio
async def test_served_over_http(u: Universe) -> None:
    clock = _Clock(DAY * 86_400 + 3_600.0)
    cfg = FakeConfig(universe=SIZE, universe_epoch=EPOCH, clock=clock)
    assert universe_of(cfg) is u
    server = await start(cfg)
    try:
        async with aiohttp.ClientSession() as s:
            for day in (DAY, DAY + 1):
                clock.now = day * 86_400 + 3_600.0
                # Pages of 37 are disjoint and cover query.total; the listing is the truth's.
                seen: list[dict[str, Any]] = []
                page, total = 0, 1
                while page * 37 < total:
                    page += 1
                    st, raw = await _get(s, _api(server, "/citations/1d", num_results=37, page=page))
                    assert st == 200
                    body = json.loads(raw)
                    total = body["query"]["total"]
                    assert body["query"]["page"] == page and body["query"]["timeframe"] == "1d"
                    seen += body["results"]
                assert (await _get(s, _api(server, "/citations/1d", num_results=37, page=page + 1)))[0] == 404
                dois = [r["doi"] for r in seen]
                assert len(dois) == len(set(dois)) == total
                assert dois == u.listing("1d", {}, day)
                assert all(r == u.counts_body(r["doi"], day) for r in seen)
                # Within the day the listing does not change.
                clock.now = day * 86_400 + 80_000.0
                st, raw = await _get(s, _api(server, "/citations/1d", num_results=37, page=2))
                assert [r["doi"] for r in json.loads(raw)["results"]] == dois[37:74]
                # Counts, Fetch and an id lookup tell the same story.
                for doi in dois[:5] + u.dois(3):
                    st, raw = await _get(s, _api(server, f"/doi/{doi}"))
                    counts = json.loads(raw)
                    assert st == 200 and counts == u.counts_body(doi, day)
                    assert _snapshot(counts) == tuple(u.truth(doi, day) or ())
                    st, raw = await _get(s, _api(server, f"/fetch/doi/{doi}"))
                    assert st == 200 and json.loads(raw) == u.fetch_body(doi, day)
                    st, raw = await _get(s, _api(server, f"/id/{counts['altmetric_id']}"))
                    assert st == 200 and json.loads(raw) == counts
            filtered = {"doi_prefix": "10.1371", "order_by": "pubdate"}
            st, raw = await _get(s, _api(server, "/citations/1w", num_results=99, **filtered))
            body = json.loads(raw)
            assert body["query"]["total"] == len(u.listing("1w", filtered, DAY + 1))
            assert [r["doi"] for r in body["results"]] == u.listing("1w", filtered, DAY + 1)[:99]
            assert (await _get(s, _api(server, "/citations/1d", order_by="bogus")))[0] == 400
            # Outside the universe, nothing moves (evolve is off).
            st, raw = await _get(s, _api(server, "/doi/10.5555/pin.0"))
            clock.now += 5 * 86_400
            assert await _get(s, _api(server, "/doi/10.5555/pin.0")) == (st, raw)
    finally:
        await server.close()
