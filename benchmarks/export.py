"""`harvester export`'s figures: rows/s per format and the peak RSS, at 1M rows and at 100k.

    python benchmarks/export.py [--rows 1000000] [--small 100000] [--formats csv,jsonl,parquet] [--keep]

A fresh SQLite file, migrated, gets a table `synthetic` shaped like `outputs` (ids, DOI,
title, journal, two timestamps, score, counts), filled by one INSERT ... SELECT over a
recursive CTE. Each export runs `python -m harvester export synthetic --format F -o FILE`
as a subprocess; its peak RSS comes from os.wait4 (the kernel's ru_maxrss of that child
alone). Memory is flat when the big export's peak is about the small one's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harvester.db import open_database

SYNTHETIC = """
CREATE TABLE synthetic (
    altmetric_id BIGINT PRIMARY KEY,
    doi TEXT,
    title TEXT,
    journal TEXT,
    published_on TIMESTAMP,
    score FLOAT,
    posts_count INTEGER,
    accounts_count INTEGER,
    readers_count INTEGER,
    is_oa BOOLEAN,
    harvested_at TIMESTAMP
)"""

FILL = """
INSERT INTO synthetic
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
SELECT i,
       '10.5555/synthetic.' || i,
       'A synthetic research output about topic number ' || (i % 997) || ', with a title of realistic length',
       CASE i % 3 WHEN 0 THEN 'Nature' WHEN 1 THEN 'Science' ELSE NULL END,
       datetime(1300000000 + i * 60, 'unixepoch'),
       CASE WHEN i % 10 = 0 THEN NULL ELSE (i % 5000) / 7.0 END,
       i % 311,
       i % 127,
       i % 1009,
       i % 2,
       '2026-11-30 12:00:00.' || printf('%06d', i % 1000000)
FROM n"""


def make_synthetic(db: Path, rows: int) -> str:
    """A migrated SQLite database with `rows` synthetic rows in table `synthetic`: its URL."""
    url = f"sqlite:///{db}"
    engine = open_database(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS synthetic")
            conn.exec_driver_sql(SYNTHETIC)
            conn.exec_driver_sql(FILL.format(rows=int(rows)))
    finally:
        engine.dispose()
    return url


def run_export(url: str, fmt: str, out: Path, table: str = "synthetic") -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one `harvester export` subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvester", "-q", "--database", url, "export", table, "--format", fmt, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"export {fmt} failed ({proc.returncode}): {err}")
    return seconds, usage.ru_maxrss * 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--formats", default="csv,jsonl,parquet")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="export-bench-"))
    print(f"# harvester export, SQLite, {os.cpu_count()} cores, in {tmp}")
    print(f"{'format':<8} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak RSS':>10} {'file':>10}")
    for rows in (args.small, args.rows):
        started = time.perf_counter()
        url = make_synthetic(tmp / f"synthetic-{rows}.db", rows)
        print(f"# built {rows:,} rows in {time.perf_counter() - started:.1f}s")
        for fmt in args.formats.split(","):
            out = tmp / f"out-{rows}.{fmt}"
            seconds, peak = run_export(url, fmt, out)
            print(
                f"{fmt:<8} {rows:>10,} {seconds:>8.1f} {rows / seconds:>10,.0f} {peak / 2**20:>8.0f}MB {out.stat().st_size / 2**20:>8.0f}MB"
            )
            out.unlink()
    if not args.keep:
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
