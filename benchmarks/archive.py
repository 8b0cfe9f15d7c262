"""The raw archive's figures: bytes per body (raw vs stored), the writer's cost, and the reparse rate.

    python benchmarks/archive.py [--counts 20000] [--fetch 2000] [--repeat 3] [--keep]

1. bytes per body, raw and zstd-compressed as archive.compress stores them, and the
   microseconds it takes, for the fake API's Counts and Fetch bodies and for the real
   samples in harvester/data; beside it, for comparison
   only, a zstd dictionary trained on other fake bodies of the same endpoint;
2. the writer's hot path: store.write_batch over the Counts bodies in batches of 500
   (as a harvest's writer runs it, leases held), archive off vs on, interleaved, best
   of --repeat, in ids/s;
3. reparse: the data tables wiped, then reparse.reparse over the archive that step 2
   wrote plus --fetch Fetch bodies: bodies/s for each endpoint.

Everything runs in-process against a fresh SQLite file (WAL), no HTTP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import zstandard
from sqlalchemy import text

from harvester import archive, clock, fakeapi, jobs, leases, reparse, schema, store
from harvester.config import ArchiveConfig
from harvester.db import open_database
from harvester.endpoints import Counts
from harvester.vocabulary import ItemResult, ItemStatus

SAMPLES = Path(__file__).resolve().parents[1] / "harvester" / "data"
BATCH = 500


def bodies(endpoint: str, n: int, prefix: str) -> list[bytes]:
    make = fakeapi.bodies._fetch_bytes if endpoint == "fetch" else fakeapi.bodies._counts_bytes
    out = [make("doi", f"10.5555/{prefix}.{i:07d}", 0.0) for i in range(n)]
    return [b for b in out if b is not None]


def sizes(name: str, raws: list[bytes], train: list[bytes] | None = None) -> None:
    t0 = time.perf_counter()
    stored = [archive.compress(r) for r in raws]
    micro = (time.perf_counter() - t0) / len(raws) * 1e6
    raw_mean, stored_mean = statistics.mean(map(len, raws)), statistics.mean(map(len, stored))
    line = f"  {name:<34} {len(raws):>6}  raw {raw_mean:>8,.0f} B  stored {stored_mean:>7,.0f} B  ratio {raw_mean / stored_mean:5.1f}x  {micro:6.1f} us/body"
    if train:
        samples: list[bytes | bytearray | memoryview] = list(train)  # zstandard's stubs take this list, not list[bytes]
        zdict = zstandard.train_dictionary(112_640, samples)
        c = zstandard.ZstdCompressor(level=archive.LEVEL, dict_data=zdict)
        with_dict = statistics.mean(len(c.compress(r)) for r in raws)
        line += f"   (trained dict: {with_dict:,.0f} B, {raw_mean / with_dict:.1f}x)"
    print(line)


def write(url: str, raws: list[bytes], settings: ArchiveConfig) -> tuple[float, float]:
    """Harvest-like writes of Counts bodies through store.write_batch; returns ids/s by the wall clock and by CPU time."""
    engine = open_database(url)
    ids = Path(url.removeprefix("sqlite:///") + ".ids")
    ids.write_text("".join(f"10.5555/w.{i}\n" for i in range(len(raws))))
    job_id = jobs.create_job(engine, [str(ids)], "doi", "counts", "bench").id
    leases.claim(engine, job_id, "bench", 10**9, timedelta(hours=1))
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(raws), BATCH):
        results = [
            ItemResult("doi", f"10.5555/w.{i}", ItemStatus.DONE, 1, 200, None, raws[i]) for i in range(start, min(start + BATCH, len(raws)))
        ]
        store.write_batch(engine, job_id, Counts(), results, clock.utcnow(), "bench", archive_config=settings)
    rates = len(raws) / (time.perf_counter() - t0), len(raws) / (time.process_time() - c0)
    engine.dispose()
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, default=20000, help="Counts bodies (default 20000)")
    parser.add_argument("--fetch", type=int, default=2000, help="Fetch bodies (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="writer runs of each kind, interleaved (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    counts = bodies("counts", args.counts, "c")
    fetch = bodies("fetch", args.fetch, "f")

    print(f"bytes per body (zstd level {archive.LEVEL}, one frame a body):")
    sizes("fake Counts", counts, bodies("counts", 2000, "train"))
    sizes("fake Fetch", fetch, bodies("fetch", 500, "train"))
    for kind in ("counts", "fetch", "citations"):
        real = [p.read_bytes() for p in sorted(SAMPLES.glob(f"{kind}*.json"))]
        if real:
            sizes(f"real samples: {kind} ({SAMPLES.name})", real)

    tmp = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    try:
        print(f"\nthe writer (store.write_batch, {BATCH} a batch, SQLite WAL), {len(counts):,} Counts bodies:")
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        # Interleaved, best of --repeat, and by CPU time too: on a shared machine the wall clock's
        # noise between two runs exceeds the difference (the writer is CPU-bound: WAL, synchronous=NORMAL).
        for run in range(args.repeat):
            for label, settings in (("archive off", ArchiveConfig(enabled=False)), ("archive on", ArchiveConfig())):
                by_wall, by_cpu = write(f"sqlite:///{tmp / label.replace(' ', '_')}{run}.db", counts, settings)
                wall[label] = max(wall.get(label, 0.0), by_wall)
                cpu[label] = max(cpu.get(label, 0.0), by_cpu)
        for label in wall:
            print(
                f"  {label:<12} {wall[label]:>8,.0f} ids/s by the wall clock, {cpu[label]:>8,.0f} ids/s of CPU time (best of {args.repeat})"
            )
        print(
            f"  cost of the archive: {1 - wall['archive on'] / wall['archive off']:.1%} of the writer's rate by the wall clock, "
            f"{1 - cpu['archive on'] / cpu['archive off']:.1%} by CPU time"
        )

        url = f"sqlite:///{tmp / 'archive_on0.db'}"
        engine = open_database(url)
        with engine.begin() as conn:
            entries = [archive.entry(None, "fetch", "doi", f"10.5555/f.{i}", raw, clock.utcnow(), 99, "{}") for i, raw in enumerate(fetch)]
            store.upsert(conn, schema.raw_bodies, archive.replace(conn, [e for e in entries if e is not None]))
        stored = (
            engine.connect()
            .execute(text("select endpoint, count(*), sum(raw_size), sum(length(body)) from raw_bodies group by endpoint"))
            .all()
        )
        print("\nthe archive on disk:")
        for endpoint, n, raw_total, body_total in stored:
            print(f"  {endpoint:<8} {n:>7,} bodies  raw {raw_total / n:,.0f} B  stored {body_total / n:,.0f} B a body")
        print("\nreparse (tables wiped first):")
        for endpoint in ("counts", "fetch"):
            with engine.begin() as conn:
                for name in ("mention_citations", *(t for t in store.DATA_TABLES if t != "mention_citations"), "counts_snapshots"):
                    conn.execute(text(f"delete from {name}"))
            outcome = reparse.reparse(engine, endpoint)
            print(f"  {endpoint:<8} {outcome.summary()}")
        engine.dispose()
    finally:
        if args.keep:
            print(f"\nkept {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
