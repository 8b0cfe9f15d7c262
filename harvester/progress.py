"""Progress on stderr: a bar on a terminal, plain periodic lines otherwise, or nothing."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from harvester.vocabulary import ItemStatus


def describe(counts: dict[str, int]) -> str:
    return f"done {counts['done']:,} · not found {counts['not_found']:,} · failed {counts['failed']:,}"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} ids/s")


class Reporter:
    """Called with the per-status counts after every committed batch."""

    def __init__(self, job_id: int, mode: str, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.job_id = job_id
        self.mode = mode
        self.stream = stream or sys.stderr
        self.interval = interval
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._first: tuple[float, int] | None = None
        self._last_line = 0.0
        self._last_shown: tuple[dict[str, int], float | None] | None = None
        self.throttled: float | None = None  # requests/s the run is held to after 429s, if it is

    @classmethod
    def for_stream(cls, job_id: int, enabled: bool, stream: TextIO | None = None) -> Reporter:
        stream = stream or sys.stderr
        mode = "none" if not enabled else ("bar" if stream.isatty() else "lines")
        return cls(job_id, mode, stream)

    def __call__(self, counts: dict[str, int], throttled: float | None = None) -> None:
        """`throttled`: the rate limiter's rate after 429s (RateLimiter.throttled), or None."""
        self.throttled = throttled
        total = sum(counts.values())
        if not total:
            return  # an empty job (a nightly step with nothing due) has no progress to show
        final = total - counts["pending"]
        if self.mode == "bar":
            self._update_bar(counts, total, final)
        elif self.mode == "lines":
            now = time.monotonic()
            if self._first is None:
                self._first = (now, final)
            due = now - self._last_line >= self.interval or counts[ItemStatus.PENDING] == 0
            shown = (dict(counts), throttled)
            if due and shown != self._last_shown:  # the end is reported by every batch after it: once is enough
                self._last_line, self._last_shown = now, shown
                self.stream.write(self.line(counts) + "\n")
                self.stream.flush()

    def line(self, counts: dict[str, int]) -> str:
        total = sum(counts.values())
        final = total - counts["pending"]
        rate = eta = None
        if self._first is not None:
            elapsed = time.monotonic() - self._first[0]
            if elapsed > 0:
                rate = (final - self._first[1]) / elapsed
                eta = counts["pending"] / rate if rate > 0 else None
        pct = 100.0 * final / total if total else 100.0
        rate_text = f"{rate:,.0f} ids/s" if rate is not None else "- ids/s"
        throttle = self._throttle_text()
        return f"job {self.job_id}: {final:,}/{total:,} ({pct:.1f}%) {describe(counts)} · {rate_text}{throttle} · ETA {format_eta(eta)}"

    def _throttle_text(self) -> str:
        return f" · throttled to {self.throttled:,.1f}/s after 429s" if self.throttled is not None else ""

    def _update_bar(self, counts: dict[str, int], total: int, final: int) -> None:
        if self._bar is None:
            self._bar = Progress(
                TextColumn(f"job {self.job_id}"),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                _RateColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(describe(counts), total=total, completed=final)
        assert self._task is not None
        self._bar.update(self._task, completed=final, total=total, description=describe(counts) + self._throttle_text())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
