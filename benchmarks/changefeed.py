"""The change-feed nightly (mode = "changes") against refresh: requests a night, errors, bytes (issue 19).

The fake API runs in a thread of this process with its universe on (FakeConfig.universe,
docs/fakeapi.md) and a clock this script moves night by night; the harvester runs as
subprocesses on HARVESTER_NOW at 02:30 UTC of each night, on the commercial tier (no limiter:
the free key's 86,400 requests a day are applied by arithmetic, requests a night against them).

1. Seed: `harvester harvest` of the --tracked DOIs (universe_dois: outputs 0 .. N-1 of the
   universe) the day before the first night, into one SQLite file, copied for each mode. The
   seed makes every output equally old, so a full refresh of "30d" would fall due all at once
   on night 31; to measure the steady state instead, the outputs' `harvested_at` (what the
   nightly's due queries read, not the snapshots) is spread over the full_refresh_after days
   before the seed (output k: k mod F days older; --no-stagger turns this off). Each night
   then fully refreshes about 1/F of the list, as it would after F nights.
2. refresh: `[nightly] mode = "refresh"` with `[api] endpoints = ["counts"]` (no discovery:
   one request per tracked output, today's behaviour), for --refresh-nights nights (its
   requests a night equal the list by construction; bytes and errors are measured).
3. changes: `mode = "changes"`, full_refresh_after --full-refresh-after, for --nights nights.
4. Errors: `daily_series` of every output, every day from the seed to the last night,
   against `Universe.truth` (Universe.series): rows, missing days, wrong score, wrong posts
   (or accounts), readers wrong on observed days, and on carried days how stale they are.
5. Bytes: the SQLite file's growth a night, and per table (dbstat) for counts_snapshots,
   job_items and raw_bodies; snapshot rows a night.
6. Goals, each with its ratio to its limit, and the --project DOIs projection:
   requests a night = listing pages + new outputs + the full-refresh share.

The attention rate (--attention-rate, default 0.01: 1% of the universe has attention on a day)
is docs/fakeapi.md's calibration: Altmetric's global 1d Citations listing holds hundreds of
thousands of outputs a day out of the tens of millions it tracks.

    python benchmarks/changefeed.py                                              # 200,000 of 1,000,000, 30 nights
    python benchmarks/changefeed.py --tracked 20000 --universe 100000 --nights 10
    python benchmarks/changefeed.py --tracked 2000 --universe 10000 --nights 4 --refresh-nights 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread, universe_of
from harvester.fakeapi.universe import Universe

KEY = "bench-changefeed-key"
FIRST_NIGHT = datetime(2026, 11, 20, 2, 30)
EPOCH_DAYS_BEFORE = 2  # universe_epoch: a little before the seed (building a day costs ~50 ms at 1M)
CONFIG = """
[api]
endpoints = {endpoints}
[limits]
per_day = {per_day}
[nightly]
mode = "{mode}"
num_results = 99
full_refresh_after = "{full}"
"""
TABLES = ("counts_snapshots", "job_items", "raw_bodies")
USED = "all tables and indexes"  # dbstat: the pages in use, free pages left out


def unix_day(d: date) -> int:
    return (d - date(1970, 1, 1)).days


class Clock:
    """The fake's clock (its UTC day is the universe's day), moved to each night by this script."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Night:
    night: date
    code: int
    seconds: float
    requests: int  # as the fake counted them
    report: dict[str, Any]
    file_bytes: int
    table_bytes: dict[str, int]
    snapshots: int  # counts_snapshots rows of the night


@dataclass
class Errors:
    outputs: int = 0
    cells: int = 0  # outputs x days expected
    rows: int = 0
    observed: int = 0
    carried: int = 0
    missing: int = 0
    wrong_score: int = 0
    wrong_posts: int = 0  # posts_count or accounts_count
    wrong_readers_observed: int = 0
    stale_readers: int = 0  # carried rows whose readers differ from the truth
    max_carried_days: int = 0  # the longest a carried row is from its observation
    max_stale_days: int = 0  # the same, among carried rows whose readers differ
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Mode:
    name: str
    db: Path
    nights: list[Night] = field(default_factory=list)
    seed_bytes: int = 0
    seed_tables: dict[str, int] = field(default_factory=dict)
    errors: Errors = field(default_factory=Errors)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, server: FakeServer, clock: Clock, universe: Universe) -> None:
        self.args = args
        self.tmp = tmp
        self.server = server
        self.clock = clock
        self.universe = universe

    def config(self, mode: str) -> Path:
        path = self.tmp / f"{mode}.toml"
        endpoints = '["counts"]' if mode == "refresh" else '["counts", "citations"]'
        path.write_text(CONFIG.format(endpoints=endpoints, per_day=self.args.per_day, mode=mode, full=self.args.full_refresh_after))
        return path

    def run(self, db: Path, when: datetime, *args: str, config: Path | None = None) -> tuple[int, str, str, float]:
        self.clock.now = when.replace(tzinfo=UTC).timestamp()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_") and k != "ALTMETRIC_API_KEY"}
        env |= {
            "HARVESTER_API_URL": self.server.url,
            "ALTMETRIC_API_KEY": KEY,
            "HARVESTER_TIER": "commercial",
            "HARVESTER_CONFIG": str(config) if config else "",
            "HARVESTER_NOW": when.isoformat(),
        }
        cmd = [sys.executable, "-m", "harvester", "--database", f"sqlite:///{db}", *args]
        started = time.monotonic()
        proc = subprocess.run(cmd, env=env, cwd=self.tmp, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started

    def seed(self, db: Path, dois: list[str]) -> float:
        ids = self.tmp / "tracked.txt"
        ids.write_text("".join(d + "\n" for d in dois))
        code, _, err, seconds = self.run(db, FIRST_NIGHT - timedelta(days=1), "harvest", "--no-progress", str(ids))
        if code != 0:
            raise SystemExit(f"the seed harvest failed ({code}): {err[-2000:]}")
        return seconds

    def night(self, mode: Mode, when: datetime) -> Night:
        before = self.server.stats.total
        code, out, err, seconds = self.run(mode.db, when, "nightly", "--json", "--no-progress", config=self.config(mode.name))
        requests = self.server.stats.total - before
        try:
            report: dict[str, Any] = json.loads(out)["reports"][-1]
        except (ValueError, KeyError, IndexError):
            raise SystemExit(f"{mode.name} night {when.date()}: no report (exit {code}): {err[-2000:]}") from None
        file_bytes, tables = db_bytes(mode.db)
        with closing(sqlite3.connect(mode.db)) as conn:
            snaps = conn.execute("SELECT count(*) FROM counts_snapshots WHERE harvested_on = ?", (when.date().isoformat(),)).fetchone()[0]
        n = Night(when.date(), code, seconds, requests, report, file_bytes, tables, int(snaps))
        print(
            f"  {mode.name:<8} {n.night}  exit {code}  {seconds:6.1f} s  {requests:>8,} requests"
            f"  {report.get('timeframe') or '':>3} listed {report.get('listed') or 0:>7,} (tracked {report.get('listed_tracked') or 0:>6,})"
            f"  full {report.get('full_refreshed') or 0:>6,}  refreshed {report.get('refreshed') or 0:>7,}"
            f"  complete {report.get('complete')}"
            f"  {tables[USED] - (mode.nights[-1].table_bytes if mode.nights else mode.seed_tables)[USED]:+,} bytes used",
            flush=True,
        )
        if code != 0:
            print(f"    stderr: {err.strip()[-1500:]}", flush=True)
        mode.nights.append(n)
        return n


def db_bytes(db: Path) -> tuple[int, dict[str, int]]:
    """The SQLite file's size (and its WAL's), and the bytes of the pages each table uses, its indexes included."""
    size = db.stat().st_size + sum(p.stat().st_size for p in (Path(f"{db}-wal"),) if p.exists())
    with closing(sqlite3.connect(db)) as conn:
        tables = dict.fromkeys(TABLES, 0)
        for name, n in conn.execute(
            "SELECT s.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_schema s ON s.name = d.name GROUP BY s.tbl_name"
        ):
            tables[str(name)] = int(n)
        tables[USED] = sum(tables.values())
    return size, tables


def stagger(db: Path, days: int, seeded: datetime) -> None:
    """Spread outputs.harvested_at over `days` days before the seed (output k: k mod days older)."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT altmetric_id FROM outputs").fetchall()
        with conn:
            conn.executemany(
                "UPDATE outputs SET harvested_at = ? WHERE altmetric_id = ?",
                [((seeded - timedelta(days=int(a) % days)).strftime("%Y-%m-%d %H:%M:%S.%f"), a) for (a,) in rows],
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def check(mode: Mode, universe: Universe, first: date, last: date) -> Errors:
    """daily_series against the truth, for every output and every day first .. last."""
    e = Errors()
    started = time.monotonic()
    days = (last - first).days + 1
    engine = create_engine(f"sqlite:///{mode.db}")
    seen: set[int] = set()
    try:
        with engine.connect() as conn:
            outputs = {int(a): str(d) for a, d in conn.execute(text("SELECT altmetric_id, doi FROM outputs WHERE superseded_by IS NULL"))}
            e.outputs = len(outputs)
            e.cells = e.outputs * days
            result = conn.execute(
                text(
                    "SELECT altmetric_id, day, score, posts_count, accounts_count, readers_count, observed FROM daily_series"
                    " WHERE day >= :first AND day <= :last ORDER BY altmetric_id, day"
                ),
                {"first": first.isoformat(), "last": last.isoformat()},
            )
            current: int | None = None
            truth: list[Any] = []
            last_observed = first
            for a, day_, score, posts, accounts, readers, observed in result:
                day = day_ if isinstance(day_, date) else date.fromisoformat(str(day_))
                if a != current:
                    current = int(a)
                    seen.add(current)
                    truth = universe.series(outputs[current], unix_day(first), unix_day(last))
                    last_observed = first
                t = truth[(day - first).days]
                e.rows += 1
                wrong = []
                if score is None or abs(float(score) - t.score) > 1e-6:
                    e.wrong_score += 1
                    wrong.append(f"score {score} (truth {t.score})")
                if (posts, accounts) != (t.posts_count, t.accounts_count):
                    e.wrong_posts += 1
                    wrong.append(f"posts/accounts {posts}/{accounts} (truth {t.posts_count}/{t.accounts_count})")
                if observed:
                    e.observed += 1
                    last_observed = day
                    if readers != t.readers_count:
                        e.wrong_readers_observed += 1
                        wrong.append(f"observed readers {readers} (truth {t.readers_count})")
                else:
                    e.carried += 1
                    age = (day - last_observed).days
                    e.max_carried_days = max(e.max_carried_days, age)
                    if readers != t.readers_count:
                        e.stale_readers += 1
                        e.max_stale_days = max(e.max_stale_days, age)
                if wrong and len(e.examples) < 10:
                    e.examples.append(f"{outputs[int(a)]} on {day} ({'observed' if observed else 'carried'}): " + "; ".join(wrong))
    finally:
        engine.dispose()
    e.missing = e.cells - e.rows
    missing_outputs = set(outputs) - seen
    if missing_outputs and len(e.examples) < 10:
        e.examples.append(f"{len(missing_outputs)} outputs have no row at all, e.g. {outputs[min(missing_outputs)]}")
    e.seconds = time.monotonic() - started
    return e


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def days_of(duration: str) -> int:
    if not duration.endswith("d"):
        raise SystemExit("--full-refresh-after: give days, e.g. 30d")
    return int(duration[:-1])


@contextmanager
def fake(args: argparse.Namespace) -> Iterator[tuple[FakeServer, Clock, Universe]]:
    clock = Clock()
    cfg = FakeConfig(
        keys=(KEY,),
        universe=args.universe,
        universe_epoch=unix_day(FIRST_NIGHT.date()) - EPOCH_DAYS_BEFORE,
        attention_rate=args.attention_rate,
        clock=clock,
    )
    universe = universe_of(cfg)
    assert universe is not None
    with serve_in_thread(cfg) as server:
        yield server, clock, universe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracked", type=int, default=200_000, help="DOIs in the user's list (default 200,000)")
    ap.add_argument("--universe", type=int, default=1_000_000, help="outputs in the fake's universe (default 1,000,000)")
    ap.add_argument("--nights", type=int, default=30, help="change-feed nights (default 30)")
    ap.add_argument("--refresh-nights", type=int, default=3, help="refresh nights measured (default 3; 0: none)")
    ap.add_argument("--attention-rate", type=float, default=0.01, help="share of the universe with attention a day (docs/fakeapi.md)")
    ap.add_argument("--full-refresh-after", default="30d")
    ap.add_argument("--per-day", type=int, default=86_400, help="the free key's requests a day (applied by arithmetic)")
    ap.add_argument("--project", type=int, default=1_000_000, help="DOIs of the projected list (default 1,000,000)")
    ap.add_argument("--no-stagger", action="store_true", help="leave every seeded output equally old (no full refresh within F nights)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (databases, configs)")
    args = ap.parse_args()
    if args.tracked > args.universe:
        raise SystemExit("--tracked must not exceed --universe")
    full_days = days_of(args.full_refresh_after)
    tmp = Path(tempfile.mkdtemp(prefix="bench-changefeed-"))
    try:
        with fake(args) as (server, clock, universe):
            run(args, tmp, Bench(args, tmp, server, clock, universe), universe, full_days)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, bench: Bench, universe: Universe, full_days: int) -> None:
    started = time.monotonic()
    print("$ python benchmarks/changefeed.py " + " ".join(sys.argv[1:]))
    print(
        f"change feed vs refresh: {args.tracked:,} tracked DOIs in a universe of {args.universe:,}, attention_rate {args.attention_rate}"
        f" ({args.attention_rate * args.universe:,.0f} outputs with attention a day), full_refresh_after {args.full_refresh_after},"
        f" {args.nights} change-feed nights, {args.refresh_nights} refresh nights, SQLite, commercial tier",
        flush=True,
    )
    print(
        "  attention rate: docs/fakeapi.md's calibration: Altmetric's global 1d Citations listing holds hundreds of thousands"
        " of outputs a day out of the tens of millions it tracks, about 1% a day",
        flush=True,
    )
    seed_db = tmp / "seed.db"
    seeded_at = FIRST_NIGHT - timedelta(days=1)
    dois = universe.dois(args.tracked)
    seconds = bench.seed(seed_db, dois)
    seed_requests = bench.server.stats.total
    print(f"  seed: harvest of {args.tracked:,} DOIs on {seeded_at.date()}: {seed_requests:,} requests, {seconds:.1f} s", flush=True)
    if not args.no_stagger:
        stagger(seed_db, full_days, seeded_at)
    modes = {name: Mode(name, tmp / f"{name}.db") for name in ("refresh", "changes")}
    seed_bytes, seed_tables = db_bytes(seed_db)
    for mode in modes.values():
        shutil.copyfile(seed_db, mode.db)
        mode.seed_bytes, mode.seed_tables = seed_bytes, seed_tables
    for name, count in (("refresh", args.refresh_nights), ("changes", args.nights)):
        for k in range(count):
            bench.night(modes[name], FIRST_NIGHT + timedelta(days=k))
    for mode in modes.values():
        if mode.nights:
            mode.errors = check(mode, universe, seeded_at.date(), mode.nights[-1].night)
            print(f"  checked {mode.name}: {mode.errors.rows:,} rows of daily_series in {mode.errors.seconds:.1f} s", flush=True)
    report(args, modes, full_days)
    print(f"  total {time.monotonic() - started:.0f} s")


def growth(mode: Mode) -> tuple[float, dict[str, float]]:
    """Mean bytes a night: the file, and per table."""
    if not mode.nights:
        return 0.0, {}
    n = len(mode.nights)
    file = (mode.nights[-1].file_bytes - mode.seed_bytes) / n
    tables = {t: (mode.nights[-1].table_bytes.get(t, 0) - mode.seed_tables.get(t, 0)) / n for t in (USED, *TABLES)}
    return file, tables


def report(args: argparse.Namespace, modes: dict[str, Mode], full_days: int) -> None:
    refresh, changes = modes["refresh"], modes["changes"]
    rows: list[tuple[str, str, str]] = []

    def per_night(mode: Mode, key: str) -> float:
        return mean([float(n.report.get(key) or 0) for n in mode.nights])

    req = {m.name: mean([float(n.requests) for n in m.nights]) for m in modes.values()}
    pages = {m.name: mean([float(-(-int(n.report.get("listed") or 0) // 99)) for n in m.nights]) for m in modes.values()}

    def table(t: str) -> Callable[[Mode], str]:
        return lambda m: f"{growth(m)[1].get(t, 0):,.0f}"

    lines: list[tuple[str, Callable[[Mode], str]]] = [
        ("nights measured", lambda m: f"{len(m.nights)} ({m.nights[0].night} .. {m.nights[-1].night})" if m.nights else "none"),
        ("exit codes", lambda m: ", ".join(sorted({str(n.code) for n in m.nights}))),
        ("complete nights", lambda m: f"{sum(1 for n in m.nights if n.report.get('complete'))} of {len(m.nights)}"),
        ("seconds a night (mean)", lambda m: f"{mean([n.seconds for n in m.nights]):.1f}"),
        ("requests a night (mean)", lambda m: f"{req[m.name]:,.1f}"),
        ("requests a night (min .. max)", lambda m: f"{min(n.requests for n in m.nights):,} .. {max(n.requests for n in m.nights):,}"),
        ("  listing pages a night (mean)", lambda m: f"{pages[m.name]:,.1f}"),
        ("  listed a night (mean query.total)", lambda m: f"{per_night(m, 'listed'):,.0f}"),
        ("  listed and tracked a night", lambda m: f"{per_night(m, 'listed_tracked'):,.0f}"),
        ("  new outputs a night", lambda m: f"{per_night(m, 'new_outputs'):,.1f}"),
        ("  fully refreshed a night", lambda m: f"{per_night(m, 'full_refreshed'):,.0f}"),
        ("  refreshed a night (refresh: the list)", lambda m: f"{per_night(m, 'refreshed'):,.0f}"),
        ("  carried a night", lambda m: f"{per_night(m, 'carried'):,.0f}"),
        (
            "daily_series: outputs x days",
            lambda m: f"{m.errors.outputs:,} x {m.errors.cells // max(1, m.errors.outputs)} = {m.errors.cells:,}",
        ),
        ("  rows (observed / carried)", lambda m: f"{m.errors.rows:,} ({m.errors.observed:,} / {m.errors.carried:,})"),
        ("  missing (no row: a gap)", lambda m: f"{m.errors.missing:,}"),
        ("  wrong score", lambda m: f"{m.errors.wrong_score:,} of {m.errors.rows:,}"),
        ("  wrong posts or accounts", lambda m: f"{m.errors.wrong_posts:,} of {m.errors.rows:,}"),
        ("  wrong readers, observed rows", lambda m: f"{m.errors.wrong_readers_observed:,} of {m.errors.observed:,}"),
        ("  stale readers, carried rows", lambda m: f"{m.errors.stale_readers:,} of {m.errors.carried:,}"),
        ("  readers staleness, days (max)", lambda m: f"{m.errors.max_stale_days} (longest carry {m.errors.max_carried_days})"),
        ("db file growth a night, bytes", lambda m: f"{growth(m)[0]:,.0f}"),
        *((f"  {t} a night, bytes", table(t)) for t in (USED, *TABLES)),
        ("  snapshot rows a night", lambda m: f"{mean([float(n.snapshots) for n in m.nights]):,.0f}"),
    ]
    for label, fn in lines:
        a, b = (fn(m) if m.nights else "-" for m in (refresh, changes))
        rows.append((label, a, b))
    width = max(len(r[0]) for r in rows)
    print(f"\n  {'':<{width}}  {'refresh':>28}  {'changes':>28}")
    for label, a, b in rows:
        print(f"  {label:<{width}}  {a:>28}  {b:>28}")
    for mode in modes.values():
        for ex in mode.errors.examples:
            print(f"  WRONG ({mode.name}): {ex}")

    # Goals, each against its limit, from this run's figures.
    print("\n  goals (value / limit = ratio)")
    refresh_req = req["refresh"] if refresh.nights else float(args.tracked)
    ratio = req["changes"] / refresh_req if refresh_req else 0.0
    goal(
        "changes' requests / refresh's, same daily freshness",
        f"{req['changes']:,.1f} / {refresh_req:,.0f} = {ratio:.4f}",
        ratio,
        0.10,
        ratio <= 0.10,
    )
    for mode in modes.values():
        e = mode.errors
        if not mode.nights:
            continue
        exact = e.wrong_score == 0 and e.wrong_posts == 0 and e.wrong_readers_observed == 0
        print(
            f"  {mode.name}: wrong score / posts / observed readers: {e.wrong_score} / {e.wrong_posts} / {e.wrong_readers_observed}"
            f" of {e.rows:,} rows (limit 0): {'met' if exact else 'NOT MET'}; days without a row (gaps): {e.missing:,}"
        )
        goal(
            f"{mode.name}: readers staleness, days",
            f"{e.max_stale_days} / {full_days}",
            float(e.max_stale_days),
            float(full_days),
            e.max_stale_days <= full_days,
        )
    # The projection.
    n = args.project
    scale = n / args.tracked
    p_universe = args.universe * scale
    listed = per_night(changes, "listed")
    share = listed / args.universe
    proj_pages = math.ceil(listed * scale / 99)
    proj_new = per_night(changes, "new_outputs") * scale
    full_measured = per_night(changes, "full_refreshed")
    proj_full = full_measured * scale
    total = proj_pages + proj_new + proj_full
    steady_full = n / full_days
    print(
        f"\n  projection: {n:,} DOIs in a universe {args.universe / args.tracked:g} times larger ({p_universe:,.0f} outputs),"
        f" from the change-feed nights' means x {scale:g}"
    )
    print(
        f"    listing pages   {listed:,.0f} listed a night = {share:.4f} of the universe ({pages['changes']:,.1f} pages measured);"
        f" x {scale:g} = {listed * scale:,.0f} / 99 = {proj_pages:,}"
    )
    print(f"    new outputs     {per_night(changes, 'new_outputs'):,.1f} a night x {scale:g} = {proj_new:,.0f}")
    print(
        f"    full refresh    {full_measured:,.1f} a night x {scale:g} = {proj_full:,.0f}   (at most {n:,} / {full_days} = {steady_full:,.0f})"
    )
    print(f"    requests a night = {proj_pages:,} + {proj_new:,.0f} + {proj_full:,.0f} = {total:,.0f}")
    goal(
        f"{n:,} DOIs: requests a night / a free key's day",
        f"{total:,.0f} / {args.per_day:,}",
        total,
        float(args.per_day),
        total <= args.per_day,
    )
    worst = proj_pages + proj_new + steady_full
    print(f"    with the full refresh at its ceiling ({steady_full:,.0f}): {worst:,.0f} = {worst / args.per_day:.3f} of {args.per_day:,}")
    real = math.ceil(share * 30_000_000 / 99)
    print(
        f"    the listing grows with the universe, not the list: unfiltered over 30,000,000 outputs at the same rate,"
        f" {share * 30_000_000:,.0f} / 99 = {real:,} pages a night; with the full refresh at its ceiling"
        f" {real + proj_new + steady_full:,.0f} = {(real + proj_new + steady_full) / args.per_day:.3f} of the day"
    )
    print(f"    refresh for the same freshness: {n:,} requests a night = {n / args.per_day:.2f} days of the quota")
    # Snapshot storage grows with what changed.
    if changes.nights:
        observed = mean(
            [
                float((r.report.get("listed_tracked") or 0) + (r.report.get("full_refreshed") or 0) + (r.report.get("new_outputs") or 0))
                for r in changes.nights
            ]
        )
        snaps = mean([float(r.snapshots) for r in changes.nights])
        goal(
            "changes: snapshot rows a night / outputs observed (listed + fully refreshed + new)",
            f"{snaps:,.0f} / {observed:,.0f}",
            snaps / observed if observed else 0.0,
            1.0,
            snaps <= observed,
        )
        snap_bytes = growth(changes)[1].get("counts_snapshots", 0.0)
        refresh_bytes = growth(refresh)[1].get("counts_snapshots", 0.0) if refresh.nights else 0.0
        print(
            f"    counts_snapshots a night: {snap_bytes:,.0f} bytes (changes) vs {refresh_bytes:,.0f} (refresh);"
            f" snapshot rows a night {snaps / args.tracked:.3f} of the list"
        )


def goal(what: str, figures: str, value: float, limit: float, met: bool) -> None:
    print(f"  {what}: {figures} (limit {limit:g}): ratio to the limit {value / limit if limit else 0:.3f}: {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
