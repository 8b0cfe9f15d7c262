"""The highest harvest ratio this machine allows, measured part by part, beside the harvester's own.

    python benchmarks/ceiling.py [--ids 20000] [--endpoint counts|fetch] [--concurrency 64] [--json]

The harvest ratio (harvest_counts.py) is the harvester's ids/s over a raw aiohttp client's
req/s, against one fake API on the same cores. A harvester makes the same requests as the raw
client and stores what they return; everything shares the machine's CPUs. So its rate is at most

    cpus / (c_fake + c_client + c_store)

where, per request, measured here in one run:

- c_fake: the fake API's CPU (its process, from psutil), while the raw client runs;
- c_client: the raw client's CPU (this process: aiohttp, and json.loads of each body);
- c_store: the least that storing a body costs: orjson of the body, then plain sqlite3
  ``executemany`` INSERTs of the rows the schema keeps of it (the harvester's own parser made
  them beforehand, untimed, as tuples in column order), plus the item's status, committed every
  500 bodies into a database made by the harvester's migrations (WAL, synchronous=NORMAL).
  No upserts, no SQLAlchemy, no leases, no archive, no parsing to rows: a floor, not a design.

The ceiling is that rate over the raw client's. The harvester is then run on the same ids
(a subprocess, as in harvest_counts.py) and its CPU per item read from os.wait4 (itself and
the writer process it reaps), beside the CPU per item the goal leaves it:
cpus / (goal x raw rate) - c_fake.

Exit 0 whether or not anything is met; 1 if the harvester fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.*, tests.pg
from benchmarks.harvest_counts import KEY, goal_for, prebuild, run_harvester, start_fake, stop_fake  # noqa: E402
from harvester.db import open_database  # noqa: E402
from harvester.parse import Records, parse_counts, parse_fetch  # noqa: E402
from harvester.store import DATA_TABLES  # noqa: E402

BATCH = 500


async def _raw_bodies(api: str, urls: list[URL], concurrency: int) -> list[bytes]:
    """What harvest_counts.py's raw client does (GET, read, json.loads of a 200), keeping the 200 bodies."""
    bodies: list[bytes] = []
    todo = iter(urls)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for url in todo:
                async with session.get(url) as r:
                    body = await r.read()
                    if r.status == 200:
                        json.loads(body)
                        bodies.append(body)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return bodies


def raw_phase(api: str, fake_pid: int, n: int, concurrency: int, endpoint: str) -> dict[str, Any]:
    """The raw client over n fresh ids: its rate, its CPU and the fake's per request, and the bodies."""
    path = "/fetch/doi" if endpoint == "fetch" else "/doi"
    urls = [URL(f"{api}{path}/10.5555/ceil.{i}?key={KEY}", encoded=True) for i in range(n)]
    fake = psutil.Process(fake_pid)
    f0, c0, t0 = sum(fake.cpu_times()[:2]), time.process_time(), time.perf_counter()
    bodies = asyncio.run(_raw_bodies(api, urls, concurrency))
    wall = time.perf_counter() - t0
    return {
        "rate": n / wall,
        "c_client": (time.process_time() - c0) / n,
        "c_fake": (sum(fake.cpu_times()[:2]) - f0) / n,
        "bodies": bodies,
    }


def _rows(records: Records) -> dict[str, list[dict[str, Any]]]:
    tables = {name: list(getattr(records, name)) for name in DATA_TABLES[1:]}
    tables["outputs"] = [records.outputs]
    return tables


def _prepared(
    bodies: list[bytes], endpoint: str
) -> tuple[list[tuple[list[bytes], dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]]]], float]:
    """Untimed: per batch, its bodies and their rows by (table, columns), as tuples; and the rows a body."""
    parse = parse_fetch if endpoint == "fetch" else parse_counts
    at = datetime.now(UTC).replace(tzinfo=None)
    batches = []
    rows_total = 0
    for start in range(0, len(bodies), BATCH):
        chunk = bodies[start : start + BATCH]
        tables: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        for raw in chunk:
            for name, rows in _rows(parse(json.loads(raw), at)).items():
                for row in rows:
                    tables.setdefault((name, tuple(row)), []).append(tuple(row.values()))
                    rows_total += 1
        batches.append((chunk, tables))
    return batches, rows_total / max(1, len(bodies))


def _job(execute: Any, executemany: Any, n: int, mark: str) -> datetime:
    """The job and its n pending items, as create_job leaves them (untimed)."""
    at = datetime.now(UTC).replace(tzinfo=None)
    execute(
        f"INSERT INTO jobs (id, endpoint, id_type, status, created_at, total_items, rejected_lines, duplicate_lines) "
        f"VALUES (1, 'counts', 'doi', 'running', {mark}, 0, 0, 0)",
        (at,),
    )
    executemany(
        f"INSERT INTO job_items (job_id, id_type, identifier, line_no, status, attempts, updated_at) "
        f"VALUES (1, 'doi', {mark}, {mark}, 'pending', 0, {mark})",
        [(f"10.5555/ceil.{i}", i, at) for i in range(n)],
    )
    return at


def store_floor(bodies: list[bytes], endpoint: str, n: int, workdir: Path) -> dict[str, float]:
    """SQLite: CPU per request of the least any harvester must do to store these bodies (module docstring)."""
    batches, rows_per_body = _prepared(bodies, endpoint)
    open_database(f"sqlite:///{workdir / 'floor.db'}").dispose()  # the schema, by the migrations
    con = sqlite3.connect(workdir / "floor.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    at = _job(con.execute, con.executemany, n, "?")
    status = "UPDATE job_items SET status = 'done', attempts = 1, http_status = 200, updated_at = ? WHERE job_id = 1 AND id_type = 'doi' AND identifier = ?"
    per_batch = -(-n // max(1, len(batches)))
    c0 = time.process_time()
    for b, (chunk, tables) in enumerate(batches):
        con.execute("BEGIN")
        for raw in chunk:
            orjson.loads(raw)
        for (name, columns), rows in tables.items():
            con.executemany(f"INSERT OR IGNORE INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
        con.executemany(status, [(at, f"10.5555/ceil.{i}") for i in range(b * per_batch, min(n, (b + 1) * per_batch))])
        con.execute("COMMIT")
    cpu = time.process_time() - c0
    con.close()
    return {"c_store": cpu / n, "rows_per_body": rows_per_body}


def _cluster_cpu(data_dir: Path) -> float:
    """CPU seconds of a PostgreSQL cluster's processes so far (postmaster and its children)."""
    postmaster = psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
    return sum(sum(p.cpu_times()[:2]) for p in [postmaster, *postmaster.children(recursive=True)])


def store_floor_pg(bodies: list[bytes], endpoint: str, n: int, url: str, data_dir: Path) -> dict[str, float]:
    """PostgreSQL: the same floor, with COPY for the rows and one UPDATE ... FROM unnest a batch for the
    statuses; the CPU is this process's plus the server's (every process of the cluster)."""
    import psycopg
    from sqlalchemy.engine import make_url

    batches, rows_per_body = _prepared(bodies, endpoint)
    open_database(url).dispose()
    u = make_url(url)

    def server_cpu() -> float:
        return _cluster_cpu(data_dir)

    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database) as con:
        at = _job(con.execute, con.cursor().executemany, n, "%s")
        con.commit()
        status = (
            "UPDATE job_items SET status = 'done', attempts = 1, http_status = 200, updated_at = %s "
            "FROM unnest(%s::text[]) AS u(identifier) WHERE job_id = 1 AND id_type = 'doi' AND job_items.identifier = u.identifier"
        )
        per_batch = -(-n // max(1, len(batches)))
        s0, c0 = server_cpu(), time.process_time()
        with con.cursor() as cur:
            for b, (chunk, tables) in enumerate(batches):
                for raw in chunk:
                    orjson.loads(raw)
                for (name, columns), rows in tables.items():
                    with cur.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                cur.execute(status, (at, [f"10.5555/ceil.{i}" for i in range(b * per_batch, min(n, (b + 1) * per_batch))]))
                con.commit()
        cpu = time.process_time() - c0 + server_cpu() - s0
    return {"c_store": cpu / n, "rows_per_body": rows_per_body}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ids", type=int, default=20_000)
    ap.add_argument("--endpoint", choices=["counts", "fetch"], default="counts")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--postgres", action="store_true", help="store into a throwaway PostgreSQL 15 server (tests/pg.py)")
    ap.add_argument("--json", action="store_true", help="the table on stderr; one JSON line of the figures on stdout")
    args = ap.parse_args()
    n, out = args.ids, sys.stderr if args.json else sys.stdout
    cpus = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="ceiling-"))
    cluster: Any = None
    if args.postgres:
        from tests.pg import Cluster

        cluster = Cluster()
        cluster.admin("CREATE DATABASE floor")
        cluster.admin("CREATE DATABASE bench")
    fake, root = start_fake(0.0, prebuild=True)
    api = root + "/v1"
    server_cpu = 0.0  # PostgreSQL's share of the harvest
    try:
        prebuild(root, args.endpoint, "10.5555/ceil.", n)
        raw = raw_phase(api, fake.pid, n, args.concurrency, args.endpoint)
        bodies = raw.pop("bodies")
        if cluster is not None:
            floor = store_floor_pg(bodies, args.endpoint, n, cluster.url("floor"), cluster.data)
        else:
            floor = store_floor(bodies, args.endpoint, n, tmp)
        del bodies
        ids_file = tmp / "ids.txt"
        ids_file.write_text("".join(f"10.5555/bench.{i:07d}\n" for i in range(n)))
        prebuild(root, args.endpoint, "10.5555/bench.", n, 7)
        db = cluster.url("bench") if cluster is not None else f"sqlite:///{tmp / 'bench.db'}"
        before = _cluster_cpu(cluster.data) if cluster is not None else 0.0
        hv = run_harvester(api, tmp, ids_file, db, args.concurrency, args.endpoint)
        server_cpu = _cluster_cpu(cluster.data) - before if cluster is not None else 0.0
    finally:
        stop_fake(fake)
        if cluster is not None:
            cluster.stop()
    if hv.exit_code != 0 or hv.final is None:
        print(f"the harvester failed (exit {hv.exit_code}):\n{hv.stderr[-2000:]}", file=sys.stderr)
        return 1
    case, goal = goal_for(0.0, args.endpoint, args.postgres)
    per_request = raw["c_fake"] + raw["c_client"] + floor["c_store"]
    ceiling = cpus / per_request / raw["rate"]
    harvester_rate = float(hv.final["rate"].replace(",", ""))
    allowed = cpus / (goal * raw["rate"]) - raw["c_fake"]
    figures = {
        "case": case,
        "cpus": cpus,
        "ids": n,
        "raw_rate": raw["rate"],
        "c_fake_ms": raw["c_fake"] * 1e3,
        "c_client_ms": raw["c_client"] * 1e3,
        "c_store_ms": floor["c_store"] * 1e3,
        "rows_per_body": floor["rows_per_body"],
        "ceiling": ceiling,
        "goal": goal,
        "allowed_harvester_ms": allowed * 1e3,
        "harvester_ms": (hv.cpu + server_cpu) / n * 1e3,
        "harvester_ratio": harvester_rate / raw["rate"],
    }
    table = [
        ("case / goal", f"{case} ≥ {goal}"),
        ("cpus", cpus),
        ("raw client req/s", f"{raw['rate']:,.0f}"),
        ("CPU ms a request: fake API", f"{figures['c_fake_ms']:.3f}"),
        ("CPU ms a request: raw client", f"{figures['c_client_ms']:.3f}"),
        ("CPU ms a body: storing it, at the least", f"{figures['c_store_ms']:.3f} ({floor['rows_per_body']:.1f} rows a body)"),
        ("ceiling ratio: cpus / (fake + client + store) / raw", f"{ceiling:.3f} ({'above' if ceiling >= goal else 'below'} the goal)"),
        ("CPU ms an item the goal leaves the harvester", f"{figures['allowed_harvester_ms']:.3f}"),
        ("CPU ms an item the harvester used (main + writer" + (" + server)" if args.postgres else ")"), f"{figures['harvester_ms']:.3f}"),
        ("harvester ratio (run phase / this raw rate)", f"{figures['harvester_ratio']:.3f}"),
    ]
    for name, value in table:
        print(f"  {name:52s} {value}", file=out)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
