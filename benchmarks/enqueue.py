"""How long loading an id list into a job takes (`jobs.create_job`), against plain sqlite3.

Writes a file of --ids DOIs (with 1% duplicates, differently cased, and 0.1% invalid lines), then in one
run times:

- **plain sqlite3**: `executemany` of the same rows into a fresh table with job_items' primary
  key (job_id, id_type, identifier), WAL and synchronous=NORMAL, one transaction: the floor;
- **create_job on SQLite**: a fresh database migrated by alembic;
- **create_job on PostgreSQL** (with --postgres): a throwaway PostgreSQL 15 server (tests/pg.py).

and prints the seconds and the ratio of each to plain sqlite3, and the peak RSS of each
create_job (the goals, benchmarks/README.md: create_job on SQLite ≤ 1.5× plain sqlite3, with a
peak RSS ≤ 250 MB). Each create_job runs in a child process of its own (this script again, with
--child), timed inside it around the call alone; its peak RSS is the kernel's ru_maxrss of that
child (the interpreter and its imports included), from os.wait4.

    python benchmarks/enqueue.py                     # 1,000,000 DOIs, SQLite only
    python benchmarks/enqueue.py --postgres          # and PostgreSQL
    python benchmarks/enqueue.py --ids 200000 --json # one JSON line of the figures on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from harvester import jobs
from harvester.db import open_database
from harvester.ids import read_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg, for --postgres

RATIO_GOAL = 1.5  # create_job on SQLite, times plain sqlite3
RSS_GOAL_MB = 250.0  # peak RSS of the create_job process


def write_ids(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            if i % 1000 == 999:
                f.write(f"not a doi {i}\n")
            elif i % 100 == 50:
                f.write(f"10.5555/BENCH.{i - 1:08d}\n")  # a duplicate of the previous line, upper-cased
            else:
                f.write(f"10.5555/bench.{i:08d}\n")


def plain_sqlite(tmp: Path, ids: Path) -> float:
    """The floor: the same rows (keys normalized by the same reader) into a table with the same primary key."""
    started = time.monotonic()
    conn = sqlite3.connect(tmp / "plain.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE items (job_id INTEGER, id_type TEXT, identifier TEXT, input TEXT, line_no INTEGER, status TEXT,"
        " attempts INTEGER, updated_at TEXT, PRIMARY KEY (job_id, id_type, identifier))"
    )
    now = str(datetime.now())
    with conn:
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            ((1, "doi", line.key, line.exact, line.line_no, "pending", 0, now) for line in read_ids([str(ids)], "doi") if line.key),
        )
    conn.close()
    return time.monotonic() - started


def create_job_here(url: str, ids: Path) -> dict[str, float | int]:
    """In the child: open (migrate) the database, then time create_job alone."""
    engine = open_database(url)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    started = time.monotonic()
    job = jobs.create_job(engine, [str(ids)], "doi", "counts", "bench")
    seconds = time.monotonic() - started
    engine.dispose()
    return {
        "seconds": seconds,
        "items": job.total_items,
        "duplicates": job.duplicate_lines,
        "rejects": job.rejected_lines,
        "rss_before_mb": rss_before,
    }


def create_job(url: str, ids: Path) -> dict[str, float | int]:
    """create_job in a child process: its figures, and its peak RSS (MB) as the kernel saw it."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", url, str(ids)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"create_job failed in its child process (exit {proc.returncode})")
    result: dict[str, float | int] = json.loads(out)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL 15 server")
    parser.add_argument("--json", action="store_true", help="the table on stderr; one JSON line of the figures on stdout")
    parser.add_argument("--child", nargs=2, metavar=("URL", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(create_job_here(args.child[0], Path(args.child[1]))))
        return
    out = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ids = tmp / "ids.txt"
        write_ids(ids, args.ids)
        floor = plain_sqlite(tmp, ids)
        results: list[tuple[str, dict[str, float | int]]] = []
        results.append(("create_job, SQLite", create_job(f"sqlite:///{tmp / 'harvest.db'}", ids)))
        if args.postgres:
            from tests.pg import Cluster

            cluster = Cluster()
            try:
                cluster.admin("CREATE DATABASE bench")
                results.append(("create_job, PostgreSQL", create_job(cluster.url("bench"), ids)))
            finally:
                cluster.stop()
    sqlite_run = results[0][1]
    ratio = float(sqlite_run["seconds"]) / floor
    rss = float(sqlite_run["peak_rss_mb"])
    print(f"  {args.ids:,} lines", file=out)
    print(f"  {'plain sqlite3 executemany':<28} {floor:7.2f} s", file=out)
    for label, r in results:
        print(
            f"  {label:<28} {r['seconds']:7.2f} s  {float(r['seconds']) / floor:5.2f}× plain sqlite3"
            f"  peak RSS {r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f} MB before create_job)"
            f"  items {r['items']:,}, duplicates {r['duplicates']:,}, rejects {r['rejects']:,}",
            file=out,
        )
    print(
        f"  goal: create_job on SQLite ≤ {RATIO_GOAL}× plain sqlite3: {ratio:.2f}×, {'met' if ratio <= RATIO_GOAL else 'not met'}", file=out
    )
    print(f"  goal: its peak RSS ≤ {RSS_GOAL_MB:.0f} MB: {rss:.0f} MB, {'met' if rss <= RSS_GOAL_MB else 'not met'}", file=out)
    if args.json:
        print(
            json.dumps(
                {
                    "case": "enqueue",
                    "value": round(ratio, 4),
                    "goal": RATIO_GOAL,
                    "goal_op": "<=",
                    "met": ratio <= RATIO_GOAL,
                    "rss_mb": round(rss, 1),
                    "rss_goal": RSS_GOAL_MB,
                    "rss_met": rss <= RSS_GOAL_MB,
                    "floor_s": round(floor, 3),
                    "create_job_s": round(float(sqlite_run["seconds"]), 3),
                    "postgres_s": round(float(results[1][1]["seconds"]), 3) if len(results) > 1 else None,
                    "ids": args.ids,
                    "load": round(os.getloadavg()[0], 2),
                    "ok": True,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
