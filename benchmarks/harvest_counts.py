"""Harvester throughput against a raw aiohttp client, in one run, against one fake API.

    python benchmarks/harvest_counts.py [--ids 20000] [--latency 0] [--concurrency 64] [--endpoint counts|fetch]
                                        [--postgres] [--no-prebuild] [--json] [--keep]

What it does (the goals are in benchmarks/README.md):

1. starts the fake Altmetric API (harvester.fakeapi) in a separate process on a free
   loopback port, with its prebuilt cache on: before each phase, untimed, the fake builds and
   encodes the answers for that phase's ids (POST /_fake/prebuild), so that during the phase
   it only looks each id up and sends the bytes: the client is what the ratio measures
   (--no-prebuild: the fake builds each body when asked, as before);
2. raw client: one aiohttp ClientSession, --concurrency requests in flight, json.loads of
   every 200 body, nothing stored, over N DOIs ``10.5555/raw.{i}``; measured again after
   the harvest over ``10.5555/raw-after.{i}`` to show how noisy the machine is;
3. harvester: ``harvester --database sqlite:///TMP/bench.db harvest --no-progress
   --concurrency C FILE`` over N DOIs ``10.5555/bench.{i:07d}`` as a subprocess (with
   --postgres, into a throwaway PostgreSQL 15 server from tests/pg.py); wall time,
   the run-phase rate from its final stderr line, and peak RSS (exact, from os.wait4;
   plus a psutil poll of the process tree every 50 ms when psutil is installed);
4. checks the database: exit code 0, N job_items, none pending, none failed, and as many
   outputs as done items;
5. prints a table, with the goal of the case (goal_for) and "met" / "not met" for the
   run-phase ratio; with --json the table goes to stderr and stdout gets one JSON line of the
   figures (what benchmarks/suite.py reads). Exit 0 whether or not the goal is met; 1 if a
   correctness check fails.

Each phase asks for its own DOIs (prebuilt just before it, the previous phase's forgotten).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

try:
    import psutil

    HAVE_PSUTIL = True
except ImportError:  # only the tree-sum figure needs it; the exact peak comes from wait4
    HAVE_PSUTIL = False

KEY = "bench-key"
FINAL_LINE = re.compile(
    r"job (?P<job>\d+) (?P<status>\w+): .*\((?P<processed>[\d,]+) in (?P<elapsed>[\d.]+)s, "
    r"(?P<rate>[\d,.]+) ids/s, (?P<requests>[\d,]+) requests\)"
)


def goal_for(latency: float, endpoint: str = "counts", postgres: bool = False) -> tuple[str, float]:
    """(case, goal) of a run: the ratio harvester/raw client must be at least the goal.

    Counts into SQLite >= 0.85; Fetch (every mention stored) >= 0.6; Counts into PostgreSQL
    >= 0.7; against a server that answers after 100 ms (or more) >= 0.95.
    """
    if latency >= 0.1:
        return "latency", 0.95
    if endpoint == "fetch":
        return "fetch", 0.6
    if postgres:
        return "postgres", 0.7
    return "counts", 0.85


# ------------------------------------------------------------------------------------------
# The fake API, in its own process
# ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_fake(latency: float, **settings: object) -> tuple[subprocess.Popen[bytes], str]:
    """Start the fake with these FakeConfig settings on a free port; return it and its root URL."""
    port = free_port()
    options = "".join(f", {k}={v!r}" for k, v in settings.items())
    code = f"from harvester.fakeapi import run, FakeConfig; run(FakeConfig(keys=({KEY!r},), latency={latency!r}{options}), port={port})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"the fake API exited with {proc.returncode}:\n{err}")
        try:
            with urllib.request.urlopen(root + "/_stats", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_fake(proc)
            raise SystemExit("the fake API did not answer within 30 s")
        time.sleep(0.05)
    return proc, root


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Ask a process to stop with `sig`; kill it if it has not within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_fake(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)
    if proc.stderr:
        proc.stderr.close()


def fake_stats(root: str) -> dict[str, object]:
    with urllib.request.urlopen(root + "/_stats", timeout=30) as r:
        d = json.loads(r.read())
    return {"total": d["total"], "by_status": d["by_status"], "prebuilt_hits": d.get("prebuilt_hits", 0), "first_at": d.get("first_at")}


def prebuild(root: str, endpoint: str, prefix: str, count: int, width: int = 0) -> dict[str, object]:
    """Have the fake (started with prebuild=True) build the answers for ``prefix{i}`` (i < count,
    zero-padded to ``width``) now, forgetting the previous phase's; returns its reply."""
    spec = {"endpoint": endpoint, "id_type": "doi", "prefix": prefix, "count": count, "width": width, "clear": True}
    req = urllib.request.Request(
        root + "/_fake/prebuild", data=json.dumps(spec).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=3600) as r:
        return dict(json.loads(r.read()))


def stats_delta(before: dict[str, object], after: dict[str, object]) -> tuple[int, dict[str, int]]:
    b, a = before["by_status"], after["by_status"]
    assert isinstance(a, dict) and isinstance(b, dict)
    statuses = {k: a.get(k, 0) - b.get(k, 0) for k in a}
    total_b, total_a = before["total"], after["total"]
    assert isinstance(total_a, int) and isinstance(total_b, int)
    return total_a - total_b, {k: v for k, v in statuses.items() if v}


# ------------------------------------------------------------------------------------------
# Raw client
# ------------------------------------------------------------------------------------------


@dataclass
class RawResult:
    requests: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _raw(api: str, prefix: str, n: int, concurrency: int, endpoint: str) -> RawResult:
    res = RawResult()
    path = "/fetch/doi" if endpoint == "fetch" else "/doi"
    urls = iter([URL(f"{api}{path}/10.5555/{prefix}.{i}?key={KEY}", encoded=True) for i in range(n)])
    statuses: dict[int, int] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for url in urls:  # a shared iterator: each worker takes the next id
                try:
                    async with session.get(url) as r:
                        body = await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 200:
                            json.loads(body)
                except (TimeoutError, aiohttp.ClientError):
                    res.errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.seconds = time.perf_counter() - t0
    res.requests = n
    res.statuses = dict(sorted(statuses.items()))
    return res


def raw_rate(api: str, prefix: str, n: int, concurrency: int, endpoint: str) -> RawResult:
    return asyncio.run(_raw(api, prefix, n, concurrency, endpoint))


# ------------------------------------------------------------------------------------------
# Harvester
# ------------------------------------------------------------------------------------------


@dataclass
class HarvestResult:
    exit_code: int
    wall: float
    maxrss_mb: float  # exact: ru_maxrss of the harvester (max over it and children it reaped)
    tree_peak_mb: float | None  # psutil poll: peak of the sum of RSS over the process tree
    tree_series: list[int]  # the sum of RSS over the tree, every 50 ms (memory over time)
    stderr: str
    final: dict[str, str] | None
    cpu: float = 0.0  # user + system seconds of the harvester and the children it reaped (its writer)


def _poll_tree(pid: int, stop: threading.Event, peak: list[int], series: list[int]) -> None:
    assert HAVE_PSUTIL
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)
        series.append(total)
        stop.wait(0.05)


def harvester_command() -> list[str]:
    exe = shutil.which("harvester", path=str(Path(sys.executable).parent)) or shutil.which("harvester")
    return [exe] if exe else [sys.executable, "-m", "harvester"]


def harvester_env(api: str) -> dict[str, str]:
    return dict(os.environ, HARVESTER_API_URL=api, ALTMETRIC_API_KEY=KEY, HARVESTER_TIER="commercial", HARVESTER_CONFIG="")


def run_harvester(api: str, workdir: Path, ids_file: Path, db: str, concurrency: int, endpoint: str) -> HarvestResult:
    """``harvester --database DB harvest ...`` (DB: a database URL) as a subprocess, waited for."""
    cmd = harvester_command()
    cmd += ["--database", db, "harvest", "--no-progress", "--concurrency", str(concurrency), "--endpoint", endpoint, str(ids_file)]
    env = harvester_env(api)
    out_path, err_path = workdir / "harvester.out", workdir / "harvester.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        # cwd=workdir: with HARVESTER_CONFIG empty, a ./harvester.toml would still be read.
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=out, stderr=err)
        stop, peak, series = threading.Event(), [0], list[int]()
        poller = threading.Thread(target=_poll_tree, args=(proc.pid, stop, peak, series), daemon=True) if HAVE_PSUTIL else None
        if poller:
            poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        if poller:
            poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text(errors="replace")
    final = None
    for line in reversed(stderr.splitlines()):
        if m := FINAL_LINE.search(line):
            final = m.groupdict()
            break
    return HarvestResult(
        exit_code=proc.returncode,
        wall=wall,
        maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        tree_peak_mb=peak[0] / 2**20 if HAVE_PSUTIL else None,
        tree_series=series,
        stderr=stderr,
        final=final,
        cpu=usage.ru_utime + usage.ru_stime,
    )


def connect(db: str) -> Any:
    """A DB-API connection (sqlite3 or psycopg) to the database of a SQLAlchemy URL, for reading."""
    if db.startswith("sqlite:///"):
        return sqlite3.connect(f"file:{db.removeprefix('sqlite:///')}?mode=ro", uri=True)
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(db)
    return psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)


def check_database(db: str, n: int, runs: int = 1) -> tuple[list[str], dict[str, int]]:
    """Problems found (empty when correct) and the per-status counts of the first job's items."""
    problems: list[str] = []
    con = connect(db)
    try:
        jobs = [r[0] for r in con.execute("SELECT id FROM jobs")]
        if len(jobs) != runs:
            problems.append(f"expected {runs} jobs, found {len(jobs)}")
        counts = dict(con.execute("SELECT status, count(*) FROM job_items WHERE job_id = 1 GROUP BY status").fetchall())
        items = sum(counts.values())
        outputs = con.execute("SELECT count(*) FROM outputs").fetchone()[0]
        mentions = con.execute("SELECT count(*) FROM mentions").fetchone()[0]
    finally:
        con.close()
    if items != n:
        problems.append(f"{items} job_items, expected {n}")
    if counts.get("pending", 0):
        problems.append(f"{counts['pending']} items still pending")
    if counts.get("failed", 0):
        problems.append(f"{counts['failed']} items failed (the fake injects no faults)")
    if outputs != counts.get("done", 0):
        problems.append(f"{outputs} outputs but {counts.get('done', 0)} done items")
    counts["outputs"] = outputs
    counts["mentions"] = mentions
    return problems, counts


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ids", type=int, default=20_000, help="ids per phase (default 20000)")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds the fake adds to every answer")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight, both clients")
    ap.add_argument("--endpoint", choices=["counts", "fetch"], default="counts", help="the endpoint both clients call")
    ap.add_argument("--postgres", action="store_true", help="harvest into a throwaway PostgreSQL 15 server (tests/pg.py)")
    ap.add_argument(
        "--no-prebuild",
        action="store_true",
        help="the fake builds each body when asked (no prebuilt cache): it then costs the machine more",
    )
    ap.add_argument("--json", action="store_true", help="the table on stderr; one JSON line of the figures on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (database, ids, logs)")
    ap.add_argument(
        "--reharvest",
        action="store_true",
        help="then harvest the same ids again into the same database (updates: every child table is replaced)",
    )
    args = ap.parse_args()
    n, conc, latency = args.ids, args.concurrency, args.latency
    use_prebuild = not args.no_prebuild
    out = sys.stderr if args.json else sys.stdout

    def say(*what: object) -> None:
        print(*what, file=out, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="harvest-bench-"))
    ids_file = tmp / "ids.txt"
    ids_file.write_text("".join(f"10.5555/bench.{i:07d}\n" for i in range(n)))
    cluster: Any = None
    if args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg
        from tests.pg import Cluster

        cluster = Cluster()
        cluster.admin("CREATE DATABASE bench")
        db = cluster.url("bench")
    else:
        db = f"sqlite:///{tmp / 'bench.db'}"

    builds: list[dict[str, object]] = []

    def ready(prefix: str, width: int = 0) -> None:
        """Prebuild the answers of a phase's ids (untimed)."""
        if use_prebuild:
            builds.append(prebuild(root, args.endpoint, f"10.5555/{prefix}.", n, width))

    def hits(before: dict[str, object], after: dict[str, object]) -> int:
        return int(str(after["prebuilt_hits"])) - int(str(before["prebuilt_hits"]))

    fake, root = start_fake(latency, prebuild=use_prebuild)
    api = root + "/v1"
    hit_counts: list[tuple[str, int, int]] = []  # (phase, prebuilt hits, requests)
    try:
        say(
            f"fake API at {api} (pid {fake.pid}), latency {latency}s; {n:,} ids per phase, "
            f"concurrency {conc}, database {'PostgreSQL' if args.postgres else 'SQLite'}, "
            f"prebuilt cache {'on' if use_prebuild else 'off'}"
        )
        ready("raw")
        s0 = fake_stats(root)
        raw = raw_rate(api, "raw", n, conc, args.endpoint)
        s1 = fake_stats(root)
        hit_counts.append(("raw", hits(s0, s1), stats_delta(s0, s1)[0]))
        say(f"raw client: {raw.rate:,.0f} req/s ({raw.seconds:.2f}s, statuses {raw.statuses}, errors {raw.errors})")
        ready("bench", 7)  # the fake's /_stats count only /v1 requests: s1 holds
        hv = run_harvester(api, tmp, ids_file, db, conc, args.endpoint)
        s2 = fake_stats(root)
        hit_counts.append(("harvest", hits(s1, s2), stats_delta(s1, s2)[0]))
        say(f"harvester: exit {hv.exit_code}, {hv.wall:.2f}s wall")
        ready("raw-after")
        s3 = fake_stats(root)
        raw_after = raw_rate(api, "raw-after", n, conc, args.endpoint)
        hit_counts.append(("raw again", hits(s3, fake_stats(root)), n))
        say(f"raw client again: {raw_after.rate:,.0f} req/s ({raw_after.seconds:.2f}s)")
        again = None
        if args.reharvest:
            ready("bench", 7)
            again = run_harvester(api, tmp, ids_file, db, conc, args.endpoint)
            say(f"harvester again (same ids, same database): exit {again.exit_code}, {again.wall:.2f}s wall")

        problems: list[str] = []
        if hv.exit_code != 0:
            problems.append(f"harvester exited with {hv.exit_code}")
        if raw.errors or raw_after.errors:
            problems.append(f"raw client transport errors: {raw.errors + raw_after.errors}")
        try:
            db_problems, counts = check_database(db, n, 2 if args.reharvest else 1)
            problems += db_problems
        except Exception as e:  # sqlite3.Error, psycopg.Error: a figure of the report, not a crash
            problems.append(f"cannot read the database: {e}")
            counts = {}
    finally:
        stop_fake(fake)
        if cluster is not None:
            cluster.stop()

    raw_requests, _ = stats_delta(s0, s1)
    if raw_requests != n:
        problems.append(f"the fake saw {raw_requests} raw requests, expected {n}")
    harvest_requests, harvest_statuses = stats_delta(s1, s2)
    raw_mean = (raw.rate + raw_after.rate) / 2
    wall_rate = n / hv.wall if hv.wall else 0.0
    run_rate = float(hv.final["rate"].replace(",", "")) if hv.final else None
    case, goal = goal_for(latency, args.endpoint, args.postgres)
    run_ratio = run_rate / raw_mean if run_rate is not None and raw_mean else None
    wall_ratio = wall_rate / raw_mean if raw_mean else None
    met = run_ratio is not None and run_ratio >= goal

    def ratio(x: float | None) -> str:
        return f"{x / raw_mean:.3f}" if x is not None and raw_mean else "n/a"

    rows = [
        ("case", case),
        ("raw client req/s (before harvest)", f"{raw.rate:,.0f}"),
        ("raw client req/s (after harvest)", f"{raw_after.rate:,.0f}"),
        ("raw client req/s (mean, the reference)", f"{raw_mean:,.0f}"),
        ("harvester ids/s (wall, incl. startup+load)", f"{wall_rate:,.0f}"),
        ("harvester ids/s (run phase, its own figure)", f"{run_rate:,.0f}" if run_rate is not None else "n/a"),
        ("ratio harvester/raw (wall)", ratio(wall_rate)),
        ("ratio harvester/raw (run phase)", ratio(run_rate)),
        (f"goal ratio ≥ {goal:.2f} (run phase)", "met" if met else "not met"),
        (f"goal ratio ≥ {goal:.2f} (wall)", "met" if wall_ratio is not None and wall_ratio >= goal else "not met"),
        ("harvester wall time s", f"{hv.wall:.2f}"),
        *(
            [
                (
                    "re-harvest ids/s (run phase) / ratio",
                    f"{float(again.final['rate'].replace(',', '')):,.0f} / {ratio(float(again.final['rate'].replace(',', '')))}",
                )
            ]
            if again is not None and again.final
            else []
        ),
        ("harvester peak RSS MB (ru_maxrss)", f"{hv.maxrss_mb:.1f}"),
        ("harvester peak RSS MB (psutil, tree sum)", f"{hv.tree_peak_mb:.1f}" if hv.tree_peak_mb is not None else "n/a"),
        (
            "tree RSS MB at 20/40/60/80/100% of the run",
            " / ".join(
                f"{hv.tree_series[min(len(hv.tree_series) - 1, int(len(hv.tree_series) * q))] / 2**20:.0f}"
                for q in (0.2, 0.4, 0.6, 0.8, 1.0)
            )
            if hv.tree_series
            else "n/a",
        ),
        ("harvester requests (its figure / fake's)", f"{hv.final['requests'] if hv.final else 'n/a'} / {harvest_requests:,}"),
        ("fake statuses during harvest", json.dumps(harvest_statuses)),
        ("prebuilt answers served / requests", ", ".join(f"{phase} {h:,}/{r:,}" for phase, h, r in hit_counts) if use_prebuild else "off"),
        (
            "prebuild (untimed) s / MB held",
            ", ".join(f"{b['seconds']} / {int(str(b['bytes'])) / 2**20:.0f}" for b in builds) if builds else "off",
        ),
        (
            "items done / not_found / failed / outputs",
            " / ".join(f"{counts.get(k, 0):,}" for k in ("done", "not_found", "failed", "outputs")),
        ),
        ("mentions stored", f"{counts.get('mentions', 0):,}"),
        ("endpoint", args.endpoint),
        ("database", "PostgreSQL 15 (tests/pg.py)" if args.postgres else "SQLite"),
        ("N ids", f"{n:,}"),
        ("concurrency", str(conc)),
        ("fake latency s", f"{latency:g}"),
        ("python", platform.python_version()),
        ("aiohttp", aiohttp.__version__),
        ("cpus", str(os.cpu_count())),
        ("load average (1 min, at the end)", f"{os.getloadavg()[0]:.2f}"),
        ("correctness", "ok" if not problems else "FAILED"),
    ]
    if use_prebuild:
        for phase, h, r in hit_counts:
            if h != r:
                problems.append(f"{phase}: {r - h:,} of {r:,} requests were not answered from the prebuilt cache")
    width = max(len(k) for k, _ in rows)
    say()
    for k, v in rows:
        say(f"  {k:<{width}}  {v}")
    for p in problems:
        say(f"  problem: {p}")
    if problems:
        say("\nharvester stderr (last 20 lines):")
        say("\n".join(hv.stderr.splitlines()[-20:]))
    if args.json:
        print(
            json.dumps(
                {
                    "case": case,
                    "value": round(run_ratio, 4) if run_ratio is not None else None,
                    "goal": goal,
                    "goal_op": ">=",
                    "met": met,
                    "ratio_wall": round(wall_ratio, 4) if wall_ratio is not None else None,
                    "raw_rate": round(raw_mean, 1),
                    "harvest_rate": run_rate,
                    "wall_rate": round(wall_rate, 1),
                    "maxrss_mb": round(hv.maxrss_mb, 1),
                    "ids": n,
                    "concurrency": conc,
                    "latency": latency,
                    "endpoint": args.endpoint,
                    "postgres": args.postgres,
                    "prebuild": use_prebuild,
                    "load": round(os.getloadavg()[0], 2),
                    "ok": not problems,
                    "problems": problems,
                }
            ),
            flush=True,
        )

    if args.keep:
        say(f"\nkept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
