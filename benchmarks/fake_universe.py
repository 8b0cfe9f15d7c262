"""How fast the fake's universe (FakeConfig.universe, docs/fakeapi.md) answers at benchmark scale.

Builds a universe of --size outputs, then times, each on its own: building --days days of
attention from the epoch, the 1d listing of the last day (cold, then on the next day, which
builds one more day), the 1w and 1m listings, a 1d listing with a filter that needs each
output's journal, a Counts and a Fetch body of a listed output (the mean over --bodies of them),
and the truth of a tracked output over the --days days (series). Prints the figures; no goal is
asserted (these are what a change-feed benchmark of 30 nights pays the fake).

    python benchmarks/fake_universe.py                 # 1,000,000 outputs, 30 days
    python benchmarks/fake_universe.py --size 200000 --days 60
"""

from __future__ import annotations

import argparse
import resource
import time

from harvester.fakeapi.universe import Universe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--bodies", type=int, default=500)
    ap.add_argument("--rate", type=float, default=0.01, help="attention_rate")
    args = ap.parse_args()
    epoch = 20_760  # 2026-11-03
    last = epoch + args.days - 1
    t = time.perf_counter()
    u = Universe(args.size, attention_rate=args.rate, epoch=epoch)
    print(f"universe of {args.size:,} outputs, attention_rate {args.rate}, {args.days} days")
    print(f"  set up                      {time.perf_counter() - t:8.3f} s")

    def timed(label: str, fn: object) -> object:
        assert callable(fn)
        t = time.perf_counter()
        out = fn()
        print(f"  {label:<27} {time.perf_counter() - t:8.3f} s" + (f"   ({len(out):,} outputs)" if isinstance(out, tuple) else ""))
        return out

    timed(f"build {args.days} days", lambda: u._day(last))
    listed = timed("1d listing", lambda: u.listing_indices("1d", (), last))
    timed("1d listing, a new day", lambda: u.listing_indices("1d", (), last + 1))
    timed("1d listing, cached", lambda: u.listing_indices("1d", (), last))
    timed("1w listing", lambda: u.listing_indices("1w", (), last))
    timed("1m listing", lambda: u.listing_indices("1m", (), last))
    timed("1d listing, issns filter", lambda: u.listing_indices("1d", (("issns", "0028-0836"),), last))
    assert isinstance(listed, tuple)
    dois = [u.doi(i) for i in listed[: args.bodies]]
    for what, fn in (("Counts body", u.counts_body), ("Fetch body", u.fetch_body)):
        t = time.perf_counter()
        for doi in dois:
            fn(doi, last)
        print(f"  {what + ', each':<27} {(time.perf_counter() - t) / len(dois) * 1e6:8.0f} us")
    tracked = u.dois(args.bodies)
    t = time.perf_counter()
    for doi in tracked:
        u.series(doi, epoch, last)
    print(f"  {'truth series, per output':<27} {(time.perf_counter() - t) / len(tracked) * 1e6:8.0f} us")
    print(f"  max RSS                     {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MB")


if __name__ == "__main__":
    main()
