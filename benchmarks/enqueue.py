"""How long loading an id list into a job takes (`jobs.create_job`), against plain sqlite3.

Writes a file of --ids DOIs (with 1% duplicates, differently cased, and 0.1% invalid lines), then in one
run times:

- **plain sqlite3**: `executemany` of the same rows into a fresh table with job_items' primary
  key (job_id, id_type, identifier), WAL and synchronous=NORMAL, one transaction: the floor;
- **create_job on SQLite**: a fresh database migrated by alembic;
- **create_job on PostgreSQL** (with --postgres): a throwaway PostgreSQL 15 server (tests/pg.py).

and prints the seconds and the ratio of each to plain sqlite3 (the goal: enqueue
≤ 1.5× plain sqlite3, benchmarks/README.md).

    python benchmarks/enqueue.py                     # 1,000,000 DOIs, SQLite only
    python benchmarks/enqueue.py --postgres          # and PostgreSQL
    python benchmarks/enqueue.py --ids 200000
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from harvester import jobs
from harvester.db import open_database
from harvester.ids import read_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg, for --postgres


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


def create_job(url: str, ids: Path) -> tuple[float, jobs.Job]:
    engine = open_database(url)
    started = time.monotonic()
    job = jobs.create_job(engine, [str(ids)], "doi", "counts", "bench")
    seconds = time.monotonic() - started
    engine.dispose()
    return seconds, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL 15 server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ids = tmp / "ids.txt"
        write_ids(ids, args.ids)
        floor = plain_sqlite(tmp, ids)
        results: list[tuple[str, float, jobs.Job | None]] = [("plain sqlite3 executemany", floor, None)]
        seconds, job = create_job(f"sqlite:///{tmp / 'harvest.db'}", ids)
        results.append(("create_job, SQLite", seconds, job))
        if args.postgres:
            from tests.pg import Cluster

            cluster = Cluster()
            try:
                cluster.admin("CREATE DATABASE bench")
                seconds, job = create_job(cluster.url("bench"), ids)
                results.append(("create_job, PostgreSQL", seconds, job))
            finally:
                cluster.stop()
    print(f"  {args.ids:,} lines")
    for label, seconds, loaded in results:
        counts = f"  items {loaded.total_items:,}, duplicates {loaded.duplicate_lines:,}, rejects {loaded.rejected_lines:,}" if loaded else ""
        print(f"  {label:<28} {seconds:7.2f} s  {seconds / floor:5.2f}× plain sqlite3{counts}")


if __name__ == "__main__":
    main()
