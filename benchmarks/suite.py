"""Issue 11's goals, each benchmark run --repeat times: the values, their median and spread, met or not.

    python benchmarks/suite.py                                   # every case, 3 runs each, full sizes
    python benchmarks/suite.py --cases counts,resume --repeat 1 --ids 2000 --big-ids 20000

Each run is a subprocess of one benchmark script with --json, which prints one JSON line of its
figures on stdout (its table goes to stderr, kept in --log-dir when given):

| case     | script                                              | value                         | goal   |
|----------|-----------------------------------------------------|-------------------------------|--------|
| counts   | harvest_counts.py --ids N                           | harvester / raw client        | ≥ 0.85 |
| fetch    | harvest_counts.py --endpoint fetch --ids FETCH_N    | harvester / raw client        | ≥ 0.6  |
| postgres | harvest_counts.py --postgres --ids N                | harvester / raw client        | ≥ 0.7  |
| latency  | harvest_counts.py --latency 0.1 --ids LATENCY_N     | harvester / raw client        | ≥ 0.95 |
| enqueue  | enqueue.py --ids BIG_N                              | create_job / plain sqlite3    | ≤ 1.5  |
|          |                                                     | and its peak RSS, MB          | ≤ 250  |
| resume   | resume.py --ids BIG_N                               | s to the first request        | ≤ 3    |

The harvest ratios are the run phase's (the harvester's own ids/s over the raw client's req/s,
the mean of the runs before and after it). The median decides "met". The runs go one after the
other, case by case; each starts its own fake API (and PostgreSQL server, for postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = ("counts", "fetch", "postgres", "latency", "enqueue", "resume")


@dataclass
class Row:
    """One line of the table: a figure of a case, over its runs."""

    case: str
    what: str
    goal: float
    op: str  # ">=" or "<="
    unit: str = ""
    values: list[float | None] = field(default_factory=list)

    def median(self) -> float | None:
        got = [v for v in self.values if v is not None]
        return statistics.median(got) if got else None

    def met(self) -> bool | None:
        m = self.median()
        if m is None:
            return None
        return m >= self.goal if self.op == ">=" else m <= self.goal


def command(case: str, args: argparse.Namespace) -> list[str]:
    py = [sys.executable]
    if case == "counts":
        return [*py, str(HERE / "harvest_counts.py"), "--ids", str(args.ids)]
    if case == "fetch":
        return [*py, str(HERE / "harvest_counts.py"), "--endpoint", "fetch", "--ids", str(args.fetch_ids)]
    if case == "postgres":
        return [*py, str(HERE / "harvest_counts.py"), "--postgres", "--ids", str(args.ids)]
    if case == "latency":
        return [*py, str(HERE / "harvest_counts.py"), "--latency", "0.1", "--ids", str(args.latency_ids)]
    if case == "enqueue":
        return [*py, str(HERE / "enqueue.py"), "--ids", str(args.big_ids)]
    if case == "resume":
        return [*py, str(HERE / "resume.py"), "--ids", str(args.big_ids)]
    raise ValueError(case)


def rows_for(case: str) -> list[tuple[str, Row]]:
    """(JSON field, row) for each figure of a case's JSON line."""
    if case == "enqueue":
        return [
            ("value", Row(case, "create_job / plain sqlite3 (x)", 1.5, "<=")),
            ("rss_mb", Row(case, "create_job peak RSS (MB)", 250.0, "<=")),
        ]
    if case == "resume":
        return [("value", Row(case, "s to the first request", 3.0, "<="))]
    what = {
        "counts": "Counts into SQLite / raw client",
        "fetch": "Fetch, every mention stored / raw client",
        "postgres": "Counts into PostgreSQL / raw client",
        "latency": "Counts, 100 ms server / raw client",
    }[case]
    goal = {"counts": 0.85, "fetch": 0.6, "postgres": 0.7, "latency": 0.95}[case]
    return [("value", Row(case, what, goal, ">="))]


def run_once(case: str, args: argparse.Namespace, run: int) -> tuple[dict[str, Any] | None, str]:
    """One run of a case: its JSON figures (None if it printed none) and a problem, if any."""
    cmd = [*command(case, args), "--json"]
    stderr_path = Path(args.log_dir) / f"{case}.{run}.log" if args.log_dir else None
    started = time.monotonic()
    with open(stderr_path, "w") if stderr_path else open(os.devnull, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    seconds = time.monotonic() - started
    figures: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            figures = json.loads(line)
            break
    problem = ""
    if figures is None:
        problem = f"exit {proc.returncode}, no figures"
    elif proc.returncode != 0 or not figures.get("ok", True):
        problem = f"exit {proc.returncode}: {'; '.join(map(str, figures.get('problems') or [])) or 'failed'}"
    print(
        f"  {case} run {run}: {seconds:.0f} s, "
        f"{json.dumps({k: figures.get(k) for k in ('value', 'rss_mb', 'load') if k in figures}) if figures else '-'}"
        f"{'  PROBLEM ' + problem if problem else ''}",
        file=sys.stderr,
        flush=True,
    )
    return figures, problem


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)} (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case (default 3)")
    ap.add_argument("--ids", type=int, default=20_000, help="ids per phase of the counts and postgres cases (default 20000)")
    ap.add_argument(
        "--fetch-ids", type=int, default=5_000, help="ids per phase of the fetch case (default 5000; the fake holds ~30 kB a body prebuilt)"
    )
    ap.add_argument(
        "--latency-ids",
        type=int,
        default=20_000,
        help="ids per phase of latency (default 20000: ~31 s a phase; at 5,000 the harvester's start-up, "
        "about a second, is a tenth of its run phase and the case measures that)",
    )
    ap.add_argument("--big-ids", type=int, default=1_000_000, help="lines of the enqueue and resume id files (default 1000000)")
    ap.add_argument("--log-dir", help="keep each run's table (its stderr) here, as CASE.RUN.log")
    ap.add_argument("--json-out", help="write every run's figures here (a JSON list)")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)

    rows: list[Row] = []
    problems: list[str] = []
    everything: list[dict[str, object]] = []
    loads: list[float] = []
    for case in cases:
        fields = rows_for(case)
        rows += [row for _, row in fields]
        for run in range(1, args.repeat + 1):
            figures, problem = run_once(case, args, run)
            if problem:
                problems.append(f"{case} run {run}: {problem}")
            if figures is not None:
                everything.append({"case": case, "run": run, **figures})
                if isinstance(figures.get("load"), int | float):
                    loads.append(float(str(figures["load"])))
            for key, row in fields:
                v = figures.get(key) if figures is not None and not problem else None
                row.values.append(float(str(v)) if isinstance(v, int | float) else None)

    headers = ["case", "what", *[f"run {i}" for i in range(1, args.repeat + 1)], "median", "spread (min–max)", "goal", "result"]
    table: list[list[str]] = []
    for row in rows:
        got = [v for v in row.values if v is not None]
        met = row.met()
        table.append(
            [
                row.case,
                row.what,
                *[fmt(v) for v in row.values],
                fmt(row.median()),
                f"{fmt(min(got))}–{fmt(max(got))}" if got else "-",
                f"{'≥' if row.op == '>=' else '≤'} {row.goal:g}",
                "n/a" if met is None else "met" if met else "not met",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    print(
        f"\n{args.repeat} run(s) a case; sizes: --ids {args.ids}, --fetch-ids {args.fetch_ids}, "
        f"--latency-ids {args.latency_ids}, --big-ids {args.big_ids}; {os.cpu_count()} cpus; "
        f"load average (1 min) at the end of the runs {min(loads):.1f}–{max(loads):.1f}"
        if loads
        else ""
    )
    for p in problems:
        print(f"problem: {p}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(everything, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
