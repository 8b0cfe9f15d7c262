"""How long the nightly takes to pick what is due, and how much memory that takes, on a big database.

Fills a fresh SQLite database (migrated by alembic) with --outputs outputs, harvested over the
last 30 days, and one harvest job whose items are those outputs plus --missing ids answered 404
40 days ago. Then times nightly.add_due() (refresh_after 20h, not_found_refresh_after 30d, no
max_items) in one transaction, as `harvester nightly` runs it, and reports the items added,
the seconds, and this process's RSS before and at its highest during it; then, with two days of snapshots for
every output, times the report's movers query.

    python benchmarks/nightly_selection.py                       # 1,000,000 outputs, 150,000 404s
    python benchmarks/nightly_selection.py --outputs 200000 --missing 30000
    python benchmarks/nightly_selection.py --postgres            # a throwaway PostgreSQL 15 (tests/pg.py)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import psutil
from sqlalchemy import Date, Engine, bindparam, insert, text

from harvester import jobs, nightly, schema
from harvester.db import open_database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg, for --postgres

CHUNK = 50_000


class RssDuring:
    """The process's RSS right before a block and its highest value during it, sampled every 10 ms
    (ru_maxrss is a lifetime peak, which filling the database has already raised)."""

    def __enter__(self) -> RssDuring:
        self.process = psutil.Process()
        self.before = self.peak = self.process.memory_info().rss / 2**20
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, default=1_000_000)
    parser.add_argument("--missing", type=int, default=150_000)
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL 15 server instead of SQLite")
    args = parser.parse_args()

    if args.postgres:
        from tests.pg import Cluster

        cluster = Cluster()
        try:
            cluster.admin("CREATE DATABASE bench")
            run(args, open_database(cluster.url("bench")), None)
        finally:
            cluster.stop()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "big.db"
            run(args, open_database(f"sqlite:///{db}"), db)


def run(args: argparse.Namespace, engine: Engine, db: Path | None) -> None:
    now = jobs.utcnow()
    fill_started = time.monotonic()
    with engine.begin() as conn:
        harvest = jobs.new_job(conn, "counts", "doi", "big harvest", {}, ["big.txt"], now)
        for start in range(0, args.outputs, CHUNK):
            ids = range(start, min(start + CHUNK, args.outputs))
            # Spread over 30 days: about two thirds are older than 20 hours.
            at = [now - timedelta(minutes=(i * 43_200) // args.outputs) for i in ids]
            conn.execute(
                insert(schema.outputs),
                [{"altmetric_id": i + 1, "doi": f"10.5555/big.{i:08d}", "score": float(i % 500), "harvested_at": at[n],
                  "first_harvested_at": at[n]} for n, i in enumerate(ids)],
            )  # fmt: skip
            conn.execute(
                insert(schema.job_items),
                [{"job_id": harvest, "id_type": "doi", "identifier": f"10.5555/big.{i:08d}", "input": f"10.5555/big.{i:08d}",
                  "line_no": i + 1, "status": "done", "attempts": 1, "altmetric_id": i + 1, "updated_at": at[n]}
                 for n, i in enumerate(ids)],
            )  # fmt: skip
        old = now - timedelta(days=40)
        for start in range(0, args.missing, CHUNK):
            ids = range(start, min(start + CHUNK, args.missing))
            conn.execute(
                insert(schema.job_items),
                [{"job_id": harvest, "id_type": "doi", "identifier": f"10.5555/gone.{i:08d}", "input": f"10.5555/gone.{i:08d}",
                  "line_no": args.outputs + i + 1, "status": "not_found", "attempts": 1, "updated_at": old} for i in ids],
            )  # fmt: skip
        refresh = jobs.new_job(conn, "counts", "doi", "refresh", {}, [], now)
    fill = time.monotonic() - fill_started
    params = {"refresh_after": "20h", "not_found_refresh_after": "30d", "max_items": None}
    cutoff = jobs.utcnow() - timedelta(hours=20)
    started = time.monotonic()
    with RssDuring() as rss, engine.begin() as conn:
        added = nightly.add_due(conn, refresh, params)
    seconds = time.monotonic() - started
    # The report: the refresh is done, every output has yesterday's and today's snapshot.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE job_items SET status = 'done', altmetric_id = CAST(substr(identifier, 13) AS INTEGER) + 1"
                " WHERE job_id = :job AND identifier LIKE '10.5555/big.%'"
            ),
            {"job": refresh},
        )
        for days, bump in ((1, "0"), (0, "(altmetric_id % 97) * 0.25")):
            snapshot = text(
                "INSERT INTO counts_snapshots (altmetric_id, harvested_on, score, harvested_at)"
                f" SELECT altmetric_id, :day, score + {bump}, harvested_at FROM outputs"
            ).bindparams(bindparam("day", type_=Date))
            conn.execute(snapshot, {"day": (now - timedelta(days=days)).date()})
    started = time.monotonic()
    with engine.connect() as conn:
        movers = nightly.movers_of(conn, refresh)
    movers_seconds = time.monotonic() - started
    with engine.connect() as conn:
        due_outputs = conn.execute(text("SELECT count(*) FROM outputs WHERE harvested_at < :cutoff"), {"cutoff": cutoff}).scalar_one()
        by_type = dict(conn.execute(text("SELECT substr(identifier, 9, 4), count(*) FROM job_items WHERE job_id = :j GROUP BY 1"), {"j": refresh}).all())
    expected = due_outputs + args.missing
    rows = [
        ("outputs / 404 ids in the database", f"{args.outputs:,} / {args.missing:,}"),
        ("database filled in s", f"{fill:.1f}"),
        ("due outputs (harvested > 20h ago)", f"{due_outputs:,}"),
        ("items added (outputs + 404s)", f"{added:,}  {by_type}"),
        ("expected", f"{expected:,}"),
        ("add_due seconds", f"{seconds:.2f}"),
        ("items per second", f"{added / seconds:,.0f}"),
        ("RSS MB before / highest during add_due", f"{rss.before:.0f} / {rss.peak:.0f}"),
        ("movers over the refreshed outputs, seconds", f"{movers_seconds:.2f} (top change {movers[0]['change']:+.2f})"),
        ("database", engine.dialect.name + (f", {db.stat().st_size / 1e6:.0f} MB" if db else "")),
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
