"""Many workers, one key: what `harvester worker` and the shared budget achieve, measured in one run.

    python benchmarks/workers.py                    # all three parts
    python benchmarks/workers.py --part scale --items 3000
    python benchmarks/workers.py --part free --rate 5 --seconds 60
    python benchmarks/workers.py --part frozen

- scale: 1, 2 and 3 `harvester worker` processes on one PostgreSQL job (a throwaway PostgreSQL 15
  server, tests/pg.py) against a fake API answering after 100 ms; items/s of each, overall (from
  the job's start to its last item, as the database saw them, process start included) and steady
  (between the 10th and 90th percentile of finished items), and the steady ratio to one worker.
  Goal: 3 workers >= 2.5x one.
- free: 3 processes (two harvests and a worker, three jobs) on one free-tier key, against a fake
  enforcing exactly the key's rate with a bucket of one; the rate the server saw, its ratio to the
  limit, and the 429s. Goal: no 429, ratio >= 0.85.
- frozen: a worker frozen with SIGSTOP past its lease ("3s") while another finishes the job, then
  SIGCONT: how many ids were asked twice (at most its requests in flight) and how many items the
  frozen worker wrote (the rest were the other's).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.*, tests.pg
from benchmarks.harvest_counts import KEY, start_fake, stop_fake  # noqa: E402
from benchmarks.limiter_accuracy import stats as fake_stats  # noqa: E402  (the whole /_stats)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:  # rows as the driver gives them
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def harvester(url: str, api: str, config: Path, *args: str, tier: str = "commercial") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_")}
    env |= {"HARVESTER_API_URL": api + "/v1", "ALTMETRIC_API_KEY": KEY, "HARVESTER_TIER": tier, "HARVESTER_CONFIG": str(config)}
    return subprocess.Popen(
        [sys.executable, "-m", "harvester", "--database", url, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def ids(tmp: Path, name: str, n: int) -> Path:
    path = tmp / f"{name}.txt"
    path.write_text("".join(f"10.5555/{name}.{i:06d}\n" for i in range(n)))
    return path


def enqueue(url: str, api: str, config: Path, id_file: Path) -> int:
    out, err = harvester(url, api, config, "harvest", "--enqueue-only", str(id_file)).communicate()
    if not out.strip().isdigit():
        raise SystemExit(f"enqueue failed: {err}")
    return int(out)


def wait_all(procs: list[subprocess.Popen[str]]) -> list[str]:
    errs = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode not in (0, 3):
            raise SystemExit(f"a harvester exited {p.returncode}: {err}")
        errs.append(err)
    return errs


def scale(url: str, tmp: Path, items: int) -> None:
    config = tmp / "scale.toml"
    config.write_text("[limits]\nconcurrency = 16\n")
    fake, api = start_fake(0.1)
    try:
        print(
            f"{'workers':>7} {'items':>6} {'seconds':>8} {'overall':>8} {'steady':>8} {'vs 1':>6}  (items/s; steady: 10th-90th percentile)"
        )
        base = None
        for n in (1, 2, 3):
            job = enqueue(url, api, config, ids(tmp, f"scale{n}", items))
            wait_all([harvester(url, api, config, "worker", str(job), "--no-progress") for _ in range(n)])
            times = sorted(float(t) for (t,) in query(url, f"select extract(epoch from updated_at) from job_items where job_id = {job}"))
            [(started,)] = query(url, f"select extract(epoch from started_at) from jobs where id = {job}")
            seconds = times[-1] - float(started)
            # Steady state: the 10th to the 90th percentile of finished items (no process start or end).
            rate = (len(times) * 8 // 10) / (times[len(times) * 9 // 10] - times[len(times) // 10])
            base = base or rate
            print(f"{n:>7} {items:>6} {seconds:>8.1f} {items / seconds:>8.1f} {rate:>8.1f} {rate / base:>6.2f}", flush=True)
    finally:
        stop_fake(fake)


def free(url: str, tmp: Path, rate: float, seconds: float) -> None:
    config = tmp / "free.toml"
    config.write_text(f"[limits]\nper_second = {rate}\nper_hour = {int(rate * 3600)}\nper_day = {int(rate * 86400)}\nconcurrency = 4\n")
    per = int(rate * seconds / 3)
    fake, api = start_fake(0.0, per_second=rate, burst=1, per_hour=int(rate * 3600), per_day=int(rate * 86400))
    try:
        third = enqueue(url, api, config, ids(tmp, "free_w", per))
        procs = [
            harvester(url, api, config, "harvest", "--no-progress", str(ids(tmp, "free_a", per)), tier="free"),
            harvester(url, api, config, "harvest", "--no-progress", str(ids(tmp, "free_b", per)), tier="free"),
            harvester(url, api, config, "worker", str(third), "--no-progress", tier="free"),
        ]
        wait_all(procs)
        s = fake_stats(api)
    finally:
        stop_fake(fake)
    achieved = float(s["rate"])
    retried = sorted(p for p, c in s["per_path"].items() if c > 1)
    if retried:
        print(f"  asked again after a 429: {', '.join(retried)}")
    print(
        f"3 processes on one free key at {rate:g}/s: {s['total']} requests, {achieved:.3f}/s as the server saw it, "
        f"ratio {achieved / rate:.3f}, {s['rate_limited']} 429s (goal: ratio >= 0.85, no 429)"
    )


def frozen(url: str, tmp: Path) -> None:
    config = tmp / "frozen.toml"
    config.write_text('[limits]\nconcurrency = 8\n[workers]\nlease = "3s"\n')
    n = 400
    fake, api = start_fake(0.2)
    try:
        job = enqueue(url, api, config, ids(tmp, "frozen", n))
        first = harvester(url, api, config, "worker", str(job), "--no-progress")
        while query(url, f"select count(*) from job_items where job_id = {job} and status != 'pending'")[0][0] < 40:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        [other_err] = wait_all([harvester(url, api, config, "worker", str(job), "--no-progress")])
        first.send_signal(signal.SIGCONT)
        [first_err] = wait_all([first])
        s = fake_stats(api)
    finally:
        stop_fake(fake)
    per_path: dict[str, int] = s["per_path"]
    twice = sum(1 for c in per_path.values() if c > 1)

    def written(err: str) -> int:
        return sum(int(m.replace(",", "")) for m in re.findall(r"\(([\d,]+) in [\d.]+s", err))

    print(
        f"frozen worker (8 in flight, lease 3s): {twice} ids asked twice; it wrote {written(first_err)}, "
        f"the other {written(other_err)}, of {n} items"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["scale", "free", "frozen", "all"], default="all")
    ap.add_argument("--items", type=int, default=2400, help="items per scale job (default 2400)")
    ap.add_argument("--rate", type=float, default=4.0, help="the free key's requests/s (default 4)")
    ap.add_argument("--seconds", type=float, default=45.0, help="how long the free part lasts (default 45)")
    args = ap.parse_args()
    from tests.pg import Cluster

    cluster = Cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
            for part in ("scale", "free", "frozen"):
                if args.part in (part, "all"):
                    with cluster.database() as url:
                        {
                            "scale": lambda: scale(url, Path(tmp), args.items),
                            "free": lambda: free(url, Path(tmp), args.rate, args.seconds),
                            "frozen": lambda: frozen(url, Path(tmp)),
                        }[part]()
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
