"""How long the nightly takes to pick what is due, and how much memory that takes, on a big database.

Fills a fresh database (SQLite migrated by alembic, or with --postgres a throwaway PostgreSQL 15)
with --outputs outputs, harvested over the last 30 days (one in ten without a DOI, so asked by its
Altmetric id), the harvest job that stored them, --missing ids answered 404 40 days ago (due
again), and last night's job in which --recent of the due outputs answered 404 (vanished upstream:
they must be neither refreshed nor asked again before not_found_refresh_after). Then times
nightly.add_due() (refresh_after 20h, not_found_refresh_after 30d, no max_items) in one
transaction, as `harvester nightly` runs it, and reports the items added (checked), the seconds,
and the RSS before and at its highest during it, of this process and of the PostgreSQL backend
running it; then, unless --no-movers, with two days of snapshots for every output, times the
report's movers query.

    python benchmarks/nightly_selection.py                       # 1,000,000 outputs, 150,000 old and 300,000 recent 404s
    python benchmarks/nightly_selection.py --outputs 200000 --missing 30000 --recent 60000
    python benchmarks/nightly_selection.py --postgres            # a throwaway PostgreSQL 15 (tests/pg.py)
    python benchmarks/nightly_selection.py --postgres --outputs 10000000 --no-movers --explain
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Date, Engine, bindparam, event, text

from harvester import clock, jobs, nightly
from harvester.db import open_database
from harvester.params import HarvestParams, NightlyParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg, for --postgres


class RssDuring:
    """The RSS of this process (and of a server process) right before a block and its highest value
    during it, sampled every 10 ms (ru_maxrss is a lifetime peak, which filling the database has
    already raised)."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.process = psutil.Process()
        self.server = psutil.Process(server_pid) if server_pid is not None else None

    def __enter__(self) -> RssDuring:
        self.before = self.peak = self.process.memory_info().rss / 2**20
        self.server_before = self.server_peak = self.server.memory_info().rss / 2**20 if self.server else 0.0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            if self.server is not None:
                self.server_peak = max(self.server_peak, self.server.memory_info().rss / 2**20)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


# The outputs (one in ten without a DOI: asked by its Altmetric id) and the harvest that stored
# them; --missing ids answered 404 40 days ago (due again); and last night's 404s of --recent
# of the due outputs (vanished upstream: hidden until not_found_refresh_after has passed).
_SERIES = {
    "postgresql": "generate_series(0, {to} - 1) AS s(i)",
    "sqlite": "(WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {to}) SELECT i FROM s)",
}
_PAD = {"postgresql": "lpad(CAST(i AS TEXT), 8, '0')", "sqlite": "printf('%08d', i)"}
_AT = {  # :now minus an interval, stored as each engine's DateTime column holds it
    "postgresql": "CAST(:now AS timestamp) - make_interval(mins => CAST({minutes} AS integer))",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%S', :now, printf('-%d minutes', {minutes})) || '.000000'",
}
_ITEMS = "INSERT INTO job_items (job_id, id_type, identifier, input, line_no, status, attempts, altmetric_id, updated_at) "
FILL = {
    dialect: [
        "INSERT INTO outputs (altmetric_id, doi, score, harvested_at, first_harvested_at)"
        " SELECT i + 1, CASE WHEN i % 10 = 7 THEN NULL ELSE '10.5555/big.' || {pad} END, CAST(i % 500 AS REAL), t, t"
        " FROM (SELECT i, {at} AS t FROM {series}) AS x".format(
            pad=_PAD[dialect], at=_AT[dialect].format(minutes="CAST(i AS BIGINT) * 43200 / :n"), series=_SERIES[dialect].format(to=":n")
        ),
        _ITEMS + "SELECT :harvest, CASE WHEN doi IS NULL THEN 'id' ELSE 'doi' END, coalesce(doi, CAST(altmetric_id AS TEXT)),"
        " coalesce(doi, CAST(altmetric_id AS TEXT)), altmetric_id, 'done', 1, altmetric_id, harvested_at FROM outputs",
        _ITEMS
        + "SELECT :harvest, 'doi', '10.5555/gone.' || {pad}, '10.5555/gone.' || {pad}, :n + i + 1, 'not_found', 1, NULL, {at}"
        " FROM {series}".format(
            pad=_PAD[dialect], at=_AT[dialect].format(minutes="40 * 1440"), series=_SERIES[dialect].format(to=":missing")
        ),
        _ITEMS
        + "SELECT :last_night, id_type, identifier, input, line_no, 'not_found', 1, NULL, {at} FROM job_items"
        " WHERE job_id = :harvest AND line_no - 1 >= :n / 30 AND line_no - 1 < :n / 30 + :recent * :stride"
        " AND (line_no - 1 - :n / 30) % :stride = 0".format(at=_AT[dialect].format(minutes="2 * 1440")),
    ]
    for dialect in ("postgresql", "sqlite")
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, default=1_000_000)
    parser.add_argument("--missing", type=int, default=150_000, help="ids answered 404 40 days ago: due again")
    parser.add_argument("--recent", type=int, default=300_000, help="due outputs whose id answered 404 two days ago: hidden")
    parser.add_argument("--no-movers", action="store_true", help="time the selection only (no snapshots, no movers query)")
    parser.add_argument("--explain", action="store_true", help="print the query plans of the selection")
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
    now = clock.utcnow().replace(microsecond=0)
    fill_started = time.monotonic()
    n, missing, recent = args.outputs, args.missing, min(args.recent, args.outputs - args.outputs // 30)
    # Every stride-th output of the older ones (all due) answered 404 two days ago: hidden.
    stride = max(1, (n - n // 30) // max(recent, 1))
    with engine.begin() as conn:
        harvest = jobs.new_job(conn, "counts", "doi", "big harvest", HarvestParams(), ["big.txt"], now - timedelta(days=45))
        last_night = jobs.new_job(conn, "counts", "doi", "last night", HarvestParams(), [], now - timedelta(days=2))
        refresh = jobs.new_job(conn, "counts", "doi", "refresh", HarvestParams(), [], now)
        # Generated by the database itself: 10M rows through the driver would take longer than the selection.
        values = {"n": n, "missing": missing, "recent": recent, "stride": stride, "harvest": harvest, "last_night": last_night}
        for sql in FILL[engine.dialect.name]:
            conn.execute(text(sql), values | {"now": now.strftime("%Y-%m-%d %H:%M:%S")})
    if engine.dialect.name == "postgresql":
        # What autovacuum does to a database this size before the next night (statistics, visibility map).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    fill = time.monotonic() - fill_started
    params = NightlyParams(now.date(), refresh_after="20h", not_found_refresh_after="30d", max_items=None)
    if args.explain:
        explain(engine, refresh, params)
    cutoff = clock.utcnow() - timedelta(hours=20)
    started = time.monotonic()
    with engine.begin() as conn:
        # The selection runs in the server: its backend's memory is what grows if anything does.
        server = conn.execute(text("SELECT pg_backend_pid()")).scalar_one() if engine.dialect.name == "postgresql" else None
        with RssDuring(server) as rss:
            added = sum(nightly.add_due(conn, refresh, params).values())  # add_due says how many each part added
    seconds = time.monotonic() - started
    movers: list[dict[str, object]] = []
    movers_seconds = 0.0
    if not args.no_movers:
        movers, movers_seconds = time_movers(engine, refresh, now)
    with engine.connect() as conn:
        due_outputs = conn.execute(text("SELECT count(*) FROM outputs WHERE harvested_at < :cutoff"), {"cutoff": cutoff}).scalar_one()
        hidden = conn.execute(text("SELECT count(*) FROM job_items WHERE job_id = :j"), {"j": last_night}).scalar_one()
        asked_again = conn.execute(
            text(
                "SELECT count(*) FROM job_items r JOIN job_items g ON g.id_type = r.id_type AND g.identifier = r.identifier"
                " WHERE r.job_id = :refresh AND g.job_id = :last_night"
            ),
            {"refresh": refresh, "last_night": last_night},
        ).scalar_one()
        by_kind: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT CASE WHEN identifier LIKE '10.5555/gone.%' THEN '404 due again' WHEN id_type = 'id' THEN 'by altmetric id'"
                    " ELSE 'by doi' END, count(*) FROM job_items WHERE job_id = :j GROUP BY 1"
                ),
                {"j": refresh},
            ).all()
        )
    expected = due_outputs - hidden + missing
    ok = added == expected and asked_again == 0 and (args.no_movers or len(movers) == nightly.MOVERS)
    rows = [
        ("outputs / old 404s / recent 404s", f"{n:,} / {missing:,} / {hidden:,}"),
        ("database filled in s", f"{fill:.1f}"),
        ("due outputs (harvested > 20h ago)", f"{due_outputs:,}, {hidden:,} of them hidden by a recent 404"),
        ("items added", f"{added:,}  {by_kind}"),
        ("expected", f"{expected:,}; recent 404s asked again: {asked_again}"),
        ("add_due seconds", f"{seconds:.2f}"),
        ("items per second", f"{added / seconds:,.0f}"),
        ("RSS MB before / highest during add_due", f"{rss.before:.0f} / {rss.peak:.0f} (this process)"),
    ]
    if server is not None:
        rows.append(("server backend RSS MB before / highest", f"{rss.server_before:.0f} / {rss.server_peak:.0f}"))
    if not args.no_movers:
        rows.append(("movers over the refreshed outputs, seconds", f"{movers_seconds:.2f} (top change {movers[0]['change']:+.2f})"))
    rows += [
        ("database", engine.dialect.name + (f", {db.stat().st_size / 1e6:.0f} MB" if db else "")),
        ("correctness", "ok" if ok else "WRONG"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    engine.dispose()
    if not ok:
        raise SystemExit(1)


def explain(engine: Engine, refresh: int, params: NightlyParams) -> None:
    """The plans of the selection's statements (PostgreSQL: EXPLAIN ANALYZE), all rolled back."""
    statements: list[tuple[str, Any]] = []  # the parameters as the DBAPI driver took them

    def capture(conn: object, cursor: object, statement: str, parameters: Any, context: object, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(engine, "before_cursor_execute", capture)
        try:
            with conn.begin() as transaction:
                nightly.add_due(conn, refresh, params)
                transaction.rollback()
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
        for statement, parameters in statements:
            with conn.begin() as transaction:
                plan = conn.exec_driver_sql(prefix + statement, parameters).all()
                transaction.rollback()
            print(statement)
            print("\n".join(" | ".join(str(v) for v in row) for row in plan), end="\n\n")


def time_movers(engine: Engine, refresh: int, now: datetime) -> tuple[list[dict[str, object]], float]:
    """The report: the refresh is done, every output has yesterday's and today's snapshot; time the movers query."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE job_items SET status = 'done', altmetric_id = CASE WHEN id_type = 'id' THEN CAST(identifier AS INTEGER)"
                " ELSE CAST(substr(identifier, 13) AS INTEGER) + 1 END"
                " WHERE job_id = :job AND (identifier LIKE '10.5555/big.%' OR id_type = 'id')"
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
        movers = nightly.movers_of(conn, [refresh])
    return movers, time.monotonic() - started


if __name__ == "__main__":
    main()
