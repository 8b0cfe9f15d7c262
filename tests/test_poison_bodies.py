"""A poison body fails its own item and nothing else (issue 17, item 8).

Whatever a 200 body makes the parser raise (nesting past the recursion limit, an
integer of more than 4,300 digits, a number past a float, a truncated text) must be a
ParseError: on the run's side (`Endpoint.check`) and in the writer process
(`Endpoint.read`), where anything else stopped the job and every `resume` stopped
again on the same item. A seeded fuzz loop over the real samples, then end-to-end
harvests against the fake API serving such bodies, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from harvester.db import open_database
from harvester.endpoints import Fetch
from harvester.fakeapi.server import make_app
from harvester.parse import ParseError, decode, parse_citations, parse_counts, parse_fetch
from harvester.vocabulary import ExitCode
from tests.conftest import FAKE, ROOT, Harness, dois, rows

NOW = datetime(2026, 11, 24, 12, 0, 0)
DATA = ROOT / "harvester" / "data"
SEED = 17_0008


def _deep(depth: int, opener: str = "[") -> str:
    closer = "]" if opener == "[" else "}"
    inner = "[]" if opener == "[" else "{}"
    if opener == "[":
        return "[" * depth + inner + "]" * depth
    return '{"a":' * depth + inner + closer * depth


def _huge(digits: int, rnd: random.Random) -> str:
    return str(rnd.randint(1, 9)) + "".join(rnd.choice("0123456789") for _ in range(digits - 1))


def _values(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The paths of every value in a decoded body."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _values(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _values(v, (*path, i))


def _replaced(body: Any, path: tuple[Any, ...], marker: str) -> Any:
    if not path:
        return marker
    copy = json.loads(json.dumps(body))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = marker
    return copy


def _poisoned(raw: bytes, rnd: random.Random) -> bytes:
    """One fuzzed variant of a real body: truncated, nested deeply somewhere, or a huge number somewhere."""
    kind = rnd.choice(("truncate", "nest", "huge", "huge-float", "nest+huge"))
    if kind == "truncate":
        return raw[: rnd.randrange(len(raw))]
    body = json.loads(raw)
    path = rnd.choice(list(_values(body)))
    marker = "\x00POISON\x00"
    text = json.dumps(_replaced(body, path, marker))
    if kind.startswith("nest"):
        # Around orjson's limit (1024) and Python's (1000), and far past both.
        depth = rnd.choice((rnd.randint(1, 60), rnd.randint(990, 1030), rnd.randint(2_000, 50_000)))
        poison = _deep(depth, rnd.choice("[{"))
        if kind == "nest+huge":
            poison = poison.replace("[]", f"[{_huge(rnd.randint(20, 6_000), rnd)}]", 1)
    elif kind == "huge":
        poison = ("-" if rnd.random() < 0.2 else "") + _huge(rnd.choice((rnd.randint(20, 400), rnd.randint(4_290, 9_000))), rnd)
    else:
        poison = f"{_huge(rnd.randint(1, 400), rnd)}.5e{rnd.randint(0, 400)}"
    return text.replace(json.dumps(marker), poison).encode()


def _parse_any(name: str, raw: bytes) -> None:
    body = decode(raw)
    if name.startswith("citations"):
        parse_citations(body, NOW)
    elif name.startswith("counts"):
        parse_counts(body, NOW)
    else:
        parse_fetch(body, NOW)
        Fetch().parse(body, NOW)


def test_fuzzed_bodies_parse_or_fail_with_a_parse_error_only() -> None:
    """Random truncations, nesting and huge numbers in every real sample: the parser answers or says why, never crashes."""
    rnd = random.Random(SEED)
    samples = sorted(p for p in DATA.glob("*.json"))
    assert len(samples) >= 17
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(600):
        path = samples[i % len(samples)]
        raw = _poisoned(path.read_bytes(), rnd)
        try:
            _parse_any(path.name, raw)
        except ParseError as e:
            assert str(e), raw[:200]
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1
    # Both sides were exercised: a fuzzer that only produced junk (or only good bodies) proves little.
    assert outcomes["parsed"] > 50 and outcomes["refused"] > 50, outcomes


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"altmetric_id": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"altmetric_id": 1, "x": ' + b"[" * 1_100 + b"]" * 1_100 + b"}", "nested too deeply"),
        (b'{"altmetric_id": 1, "score": ' + b"7" * 5_000 + b"}", "4300"),
    ],
    ids=["nested-100000", "nested-1100", "5000-digits"],
)
def test_decode_names_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        decode(raw)


def test_values_the_parser_cannot_hold_are_no_value_or_a_parse_error() -> None:
    # An integer past a float (400 digits) is no score; an altmetric_id past BIGINT is no id.
    rec = parse_counts(json.loads(b'{"altmetric_id": 5, "score": ' + b"9" * 400 + b"}"), NOW)
    assert rec.outputs["score"] is None
    with pytest.raises(ParseError, match="altmetric_id"):
        parse_counts({"altmetric_id": 10**30}, NOW)
    # A post nested deeper than json.dumps can hash (orjson still decodes it): the item's failure, not the writer's crash.
    post: Any = {"x": 1}
    for _ in range(1_010):
        post = [post]
    with pytest.raises(ParseError, match="nested too deeply"):
        parse_fetch({"altmetric_id": 5, "posts": {"blogs": [{"author": post}]}}, NOW)


# ---- end to end: the fake API over HTTP, the CLI, a real database ------------------------------

DEEP = b'{"altmetric_id": 424242, "citation": {"title": "deep"}, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
HUGE = b'{"altmetric_id": 424243, "citation": {"title": "huge"}, "altmetric_score": {"score": ' + b"8" * 4_400 + b"}}"
# Decodes on the run's side (orjson, depth < 1024), fails in the writer process (json.dumps of the post).
_POST = '{"a":' * 1_010 + "1" + "}" * 1_010
WRITER = (
    b'{"altmetric_id": 424244, "citation": {"doi": "10.5555/poison.writer"}, "posts": {"blogs": [{"author": ' + _POST.encode() + b"}]}}"
)
# A citation that is not an object: the run's other-DOI check must not crash on it.
CITATION_LIST = b'{"altmetric_id": 424245, "citation": ["10.5555/x"]}'
POISON = {
    "10.5555/poison.deep": (DEEP, "nested too deeply"),
    "10.5555/poison.huge": (HUGE, "4300"),
    "10.5555/poison.writer": (WRITER, "nested too deeply"),
}


@contextmanager
def _poison_fake() -> Iterator[str]:
    """The bundled fake API, with the poison ids answered by their bodies (a middleware in front of it)."""

    @web.middleware
    async def poison(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        for doi, (body, _) in POISON.items():
            if request.path.endswith(doi):
                return web.Response(body=body, content_type="application/json")
        if request.path.endswith("10.5555/poison.citation"):
            return web.Response(body=CITATION_LIST, content_type="application/json")
        return await handler(request)

    app = make_app(FAKE)
    app.middlewares.append(poison)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(app, access_log=None)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


class _Server:
    def __init__(self, url: str) -> None:
        self.url = url


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_job_with_poison_bodies_finishes_with_only_those_failed(
    tmp_path: Path, clean_env: None, request: pytest.FixtureRequest, database: str
) -> None:
    url = f"sqlite:///{tmp_path / 'harvest.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    good = dois(30, "10.5555/poisonjob")
    ids = good + [*POISON, "10.5555/poison.citation"]
    with _poison_fake() as api:
        h = Harness(tmp_path, _Server(api))  # type: ignore[arg-type]
        result = h.run("--database", url, "harvest", "--endpoint", "fetch", "--no-progress", h.ids(ids))
        engine = open_database(url)
        try:
            items = {r["identifier"]: r for r in rows(engine, "select identifier, status, last_error from job_items")}
            assert result.exit_code == ExitCode.SOME_FAILED, result.output
            assert {i for i, r in items.items() if r["status"] == "failed"} == set(POISON)
            for doi, (_, reason) in POISON.items():
                assert reason in items[doi]["last_error"], items[doi]
            assert {items[d]["status"] for d in good} <= {"done", "not_found"}
            assert items["10.5555/poison.citation"]["status"] == "done"
            [job] = rows(engine, "select status from jobs")
            assert job["status"] == "finished"
            # The good bodies are stored (and nothing is left for a resume to stop on: the job finished).
            assert rows(engine, "select count(*) as n from outputs")[0]["n"] >= sum(items[d]["status"] == "done" for d in good)
        finally:
            engine.dispose()
