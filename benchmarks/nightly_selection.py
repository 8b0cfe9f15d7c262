"""How long the nightly takes to pick what is due, and how much memory that takes, on a big database.

Fills a fresh SQLite database (migrated by alembic) with --outputs outputs, harvested over the
last 30 days, and one harvest job whose items are those outputs plus --missing ids answered 404
40 days ago. Then times nightly.add_due() (refresh_after 20h, not_found_refresh_after 30d, no
max_items) in one transaction, as `harvester nightly` runs it, and reports the items added,
the seconds, and the growth of this process's peak RSS; then, with two days of snapshots for
every output, times the report's movers query.

    python benchmarks/nightly_selection.py                       # 1,000,000 outputs, 150,000 404s
    python benchmarks/nightly_selection.py --outputs 200000 --missing 30000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from harvester import jobs, nightly
from harvester.db import open_database

CHUNK = 50_000


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, default=1_000_000)
    parser.add_argument("--missing", type=int, default=150_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "big.db"
        engine = open_database(f"sqlite:///{db}")
        now = jobs.utcnow()
        fill_started = time.monotonic()
        with engine.begin() as conn:
            harvest = jobs.new_job(conn, "counts", "doi", "big harvest", {}, ["big.txt"], now)
            for start in range(0, args.outputs, CHUNK):
                ids = range(start, min(start + CHUNK, args.outputs))
                # Spread over 30 days: about two thirds are older than 20 hours.
                at = [str(now - timedelta(minutes=(i * 43_200) // args.outputs)) for i in ids]
                conn.exec_driver_sql(
                    "INSERT INTO outputs (altmetric_id, doi, score, harvested_at, first_harvested_at) VALUES (?, ?, ?, ?, ?)",
                    [(i + 1, f"10.5555/big.{i:08d}", float(i % 500), at[n], at[n]) for n, i in enumerate(ids)],
                )
                conn.exec_driver_sql(
                    "INSERT INTO job_items (job_id, id_type, identifier, input, line_no, status, attempts, altmetric_id, updated_at)"
                    " VALUES (?, 'doi', ?, ?, ?, 'done', 1, ?, ?)",
                    [(harvest, f"10.5555/big.{i:08d}", f"10.5555/big.{i:08d}", i + 1, i + 1, at[n]) for n, i in enumerate(ids)],
                )
            old = str(now - timedelta(days=40))
            for start in range(0, args.missing, CHUNK):
                ids = range(start, min(start + CHUNK, args.missing))
                conn.exec_driver_sql(
                    "INSERT INTO job_items (job_id, id_type, identifier, input, line_no, status, attempts, updated_at)"
                    " VALUES (?, 'doi', ?, ?, ?, 'not_found', 1, ?)",
                    [(harvest, f"10.5555/gone.{i:08d}", f"10.5555/gone.{i:08d}", args.outputs + i + 1, old) for i in ids],
                )
            refresh = jobs.new_job(conn, "counts", "doi", "refresh", {}, [], now)
        fill = time.monotonic() - fill_started
        params = {"refresh_after": "20h", "not_found_refresh_after": "30d", "max_items": None}
        rss_before = rss_mb()
        cutoff = jobs.utcnow() - timedelta(hours=20)
        started = time.monotonic()
        with engine.begin() as conn:
            added = nightly.add_due(conn, refresh, params)
        seconds = time.monotonic() - started
        rss_after = rss_mb()
        # The report: the refresh is done, every output has yesterday's and today's snapshot.
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE job_items SET status = 'done', altmetric_id = CAST(substr(identifier, 13) AS INTEGER) + 1"
                f" WHERE job_id = {refresh} AND identifier LIKE '10.5555/big.%'"
            )
            for days, bump in ((1, "0"), (0, "(altmetric_id % 97) * 0.25")):
                conn.exec_driver_sql(
                    "INSERT INTO counts_snapshots (altmetric_id, harvested_on, score, harvested_at)"
                    f" SELECT altmetric_id, date('now', '-{days} day'), score + {bump}, harvested_at FROM outputs"
                )
        started = time.monotonic()
        with engine.connect() as conn:
            movers = nightly.movers_of(conn, refresh)
        movers_seconds = time.monotonic() - started
        with engine.connect() as conn:
            due_outputs = conn.execute(text("SELECT count(*) FROM outputs WHERE harvested_at < :cutoff"), {"cutoff": cutoff}).scalar_one()
            by_type = dict(conn.exec_driver_sql(f"SELECT substr(identifier, 9, 4), count(*) FROM job_items WHERE job_id = {refresh} GROUP BY 1").all())
        expected = due_outputs + args.missing
        rows = [
            ("outputs / 404 ids in the database", f"{args.outputs:,} / {args.missing:,}"),
            ("database filled in s", f"{fill:.1f}"),
            ("due outputs (harvested > 20h ago)", f"{due_outputs:,}"),
            ("items added (outputs + 404s)", f"{added:,}  {by_type}"),
            ("expected", f"{expected:,}"),
            ("add_due seconds", f"{seconds:.2f}"),
            ("items per second", f"{added / seconds:,.0f}"),
            ("peak RSS MB before / after add_due", f"{rss_before:.0f} / {rss_after:.0f}"),
            ("movers over the refreshed outputs, seconds", f"{movers_seconds:.2f} (top change {movers[0]['change']:+.2f})"),
            ("database size MB", f"{db.stat().st_size / 1e6:.0f}"),
            ("correctness", "ok" if added == expected and len(movers) == nightly.MOVERS else "WRONG"),
        ]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"  {k:<{width}}  {v}")
        engine.dispose()
        if added != expected or len(movers) != nightly.MOVERS:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
