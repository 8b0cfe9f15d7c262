"""How long `harvester resume` of a big, nearly finished job takes to send its first request.

    python benchmarks/resume.py                      # 1,000,000 ids, 99% done
    python benchmarks/resume.py --ids 20000 --json   # one JSON line of the figures on stdout

What it does (the goal, ≤ 3 s, is in benchmarks/README.md):

1. writes a file of --ids DOIs (benchmarks/enqueue.py's: 1% duplicates, 0.1% invalid lines) and
   loads it into a fresh SQLite database with ``jobs.create_job`` (untimed);
2. marks the first --done-pct percent of the job's items (by line number, as a run that was
   stopped leaves them) ``done`` with one SQL UPDATE, and ANALYZEs nothing: the database is as a
   stopped harvest would leave it, minus the outputs (``resume`` does not read them);
3. starts the fake API (benchmarks/harvest_counts.py's) and then ``harvester --database ...
   resume JOB --no-progress`` as a subprocess, and polls the fake's ``/_stats`` every 5 ms
   until it has seen a request: the figure is the fake's ``first_at`` (its first request, on
   CLOCK_MONOTONIC, the same clock in both processes) minus the time just before the
   subprocess was started, so it holds the interpreter's start, the imports, opening the
   database and selecting the work;
4. stops the harvester (SIGINT, as Ctrl-C; SIGKILL after 30 s) and the fake.

Exit 0 whether or not the goal is met; 1 if no request came within --timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the other benchmarks' helpers, benchmarks.*
from benchmarks.enqueue import write_ids  # noqa: E402
from benchmarks.harvest_counts import fake_stats, harvester_command, harvester_env, start_fake, stop_fake, stop_process  # noqa: E402
from harvester import jobs  # noqa: E402
from harvester.db import open_database  # noqa: E402

GOAL_S = 3.0


def prepare(db_url: str, ids: Path, done_pct: float) -> tuple[int, int, int]:
    """Load the ids into a job and mark the first done_pct% done: (job id, items, items left pending)."""
    engine = open_database(db_url)
    try:
        job = jobs.create_job(engine, [str(ids)], "doi", "counts", "bench-resume")
        done = int(job.total_items * done_pct / 100)
        with engine.begin() as conn:
            if done:
                # The first `done` items in the order they are worked: line_no.
                cutoff = conn.execute(
                    text("SELECT line_no FROM job_items WHERE job_id = :j ORDER BY line_no LIMIT 1 OFFSET :k"),
                    {"j": job.id, "k": done - 1},
                ).scalar_one()
                conn.execute(
                    text("UPDATE job_items SET status = 'done', attempts = 1, http_status = 200 WHERE job_id = :j AND line_no <= :cutoff"),
                    {"j": job.id, "cutoff": cutoff},
                )
            pending = conn.execute(
                text("SELECT count(*) FROM job_items WHERE job_id = :j AND status = 'pending'"), {"j": job.id}
            ).scalar_one()
    finally:
        engine.dispose()
    return job.id, job.total_items, int(pending)


def time_to_first_request(root: str, db_url: str, job_id: int, workdir: Path, timeout: float) -> tuple[float | None, int]:
    """Seconds from starting `harvester resume JOB` to the fake's first request (None: none came),
    and the exit status of the harvester once stopped."""
    cmd = [*harvester_command(), "--database", db_url, "resume", str(job_id), "--no-progress"]
    with open(workdir / "resume.err", "ab") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=harvester_env(root + "/v1"), cwd=workdir, stdout=subprocess.DEVNULL, stderr=err)
        first: float | None = None
        try:
            while time.monotonic() - t0 < timeout:
                stats = fake_stats(root)
                if stats["first_at"] is not None:  # a fresh fake: its first request is the harvester's
                    first = float(str(stats["first_at"])) - t0
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.005)
        finally:
            stop_process(proc, signal.SIGINT, timeout=30)
    return first, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=1_000_000, help="lines in the id file (default 1000000)")
    ap.add_argument("--done-pct", type=float, default=99.0, help="share of the items already done (default 99)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up waiting for a first request after this")
    ap.add_argument("--json", action="store_true", help="the table on stderr; one JSON line of the figures on stdout")
    args = ap.parse_args()
    out = sys.stderr if args.json else sys.stdout

    with tempfile.TemporaryDirectory(prefix="resume-bench-") as name:
        tmp = Path(name)
        ids = tmp / "ids.txt"
        db_url = f"sqlite:///{tmp / 'resume.db'}"
        write_ids(ids, args.ids)
        t0 = time.monotonic()
        job_id, items, pending = prepare(db_url, ids, args.done_pct)
        print(
            f"  job {job_id}: {items:,} items, {pending:,} pending ({args.done_pct:g}% done); prepared in {time.monotonic() - t0:.1f} s",
            file=out,
            flush=True,
        )
        fake, root = start_fake(0.0)
        try:
            value, status = time_to_first_request(root, db_url, job_id, tmp, args.timeout)
        finally:
            stop_fake(fake)
        if value is None:
            print(
                f"  resume: no request within {args.timeout:g} s (exit {status}):\n"
                f"{(tmp / 'resume.err').read_text(errors='replace')[-2000:]}",
                file=out,
            )
        else:
            print(f"  resume: first request after {value:.2f} s (exit {status} once stopped)", file=out)
    met = value is not None and value <= GOAL_S
    print(
        f"  goal: first request ≤ {GOAL_S:g} s after `harvester resume` starts: "
        f"{f'{value:.2f} s' if value is not None else 'none'}, {'met' if met else 'not met'}",
        file=out,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "case": "resume",
                    "value": round(value, 3) if value is not None else None,
                    "goal": GOAL_S,
                    "goal_op": "<=",
                    "met": met,
                    "ids": args.ids,
                    "items": items,
                    "pending": pending,
                    "load": round(os.getloadavg()[0], 2),
                    "ok": value is not None,
                }
            ),
            flush=True,
        )
    return 0 if value is not None else 1


if __name__ == "__main__":
    sys.exit(main())
