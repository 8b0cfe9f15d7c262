"""The writer process: the single writer of a run, in a process of its own.

The run (pipeline.Run.write) hands it one batch at a time through a queue and waits for the
commit; the batch's rows and item statuses are written by store.write_batch in one
transaction (docs/architecture.md, invariants). A process, not a thread: parsing and
SQL then run on the other core instead of holding the event loop's GIL.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import queue
import signal
from typing import Any

from harvester.config import ArchiveConfig
from harvester.endpoints import Endpoint
from harvester.errors import DatabaseError, HarvesterError
from harvester.log import child_settings, setup_child
from harvester.store import write_batch
from harvester.vocabulary import ItemResult


class WriterProcess:
    """The single writer, in a process of its own.

    Parsing and SQL then run on the other core: in one process, the writer
    thread held the GIL for most of every batch and the event loop (HTTP) waited.
    Two batches can be in flight: one committing, the next queued behind it.
    """

    def __init__(
        self,
        url: str,
        job_id: int,
        endpoint: Endpoint,
        runner: str,
        archive_config: ArchiveConfig | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a running event loop and its threads
        self._inbox: Any = ctx.Queue(maxsize=1)
        self._outbox: Any = ctx.Queue()
        self._process = ctx.Process(
            target=_writer_main,
            # The parent's verbosity and secrets: the child starts with neither (spawn).
            args=(url, job_id, endpoint, runner, archive_config, self._inbox, self._outbox, child_settings()),
            name="harvester-writer",
            daemon=True,
        )

    def start(self) -> None:
        """Start the process, once (later calls do nothing). From the main thread: the child's
        parent-death signal is tied to the creating thread."""
        if self._process.pid is None:
            self._process.start()

    def send(self, batch: list[tuple[Any, ...]]) -> None:
        """Hand a batch over (ItemResult fields as tuples: a tenth of the pickling cost of the dataclasses,
        which the event loop's process pays). Returns once it is queued: the writer may still be
        committing the one before, so that it never waits for the next (blocking: call it from a thread)."""
        while True:
            try:
                self._inbox.put(batch, timeout=1.0)
                return
            except queue.Full:
                self._check_alive()

    def receive(self) -> dict[str, int]:
        """How the oldest batch not yet received was committed: items per status (blocking: call it from a thread)."""
        while True:
            try:
                kind, value = self._outbox.get(timeout=1.0)
            except queue.Empty:
                self._check_alive()
                continue
            if kind == "error":
                raise DatabaseError(value)
            return dict(value)

    def _check_alive(self) -> None:
        if not self._process.is_alive():
            raise DatabaseError(f"the writer process died (exit code {self._process.exitcode})") from None

    def close(self) -> None:
        """Have the writer finish what it took and exit (blocking: call it from a thread)."""
        while self._process.is_alive():
            try:
                self._inbox.put(None, timeout=1.0)
                break
            except queue.Full:
                continue  # it is still committing the batch before: never block on a writer that died
        if self._process.pid is not None:  # a run with nothing to claim never started it
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        # A batch that nobody will read may still sit in a queue's buffer: after a second Ctrl-C, a send
        # cancelled mid-way can queue it behind the None. Its feeder thread then blocks on a full pipe,
        # and the interpreter's exit joined that thread forever (a process that printed its resume line
        # and never exited). The child is gone: let exit drop what it never read.
        self._inbox.cancel_join_thread()
        self._outbox.cancel_join_thread()
        self._inbox.close()
        self._outbox.close()


def _writer_main(
    url: str,
    job_id: int,
    endpoint: Endpoint,
    runner: str,
    archive_config: ArchiveConfig | None,
    inbox: Any,
    outbox: Any,
    log_settings: tuple[int, tuple[str, ...]],
) -> None:
    # Signals are the parent's to handle: on Ctrl-C it flushes what it has through us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Before anything can log: redacted, -q honoured, the same UTC lines as the parent's.
    setup_child(log_settings)
    parent = multiprocessing.parent_process()
    _die_with_parent()
    from harvester.clock import utcnow
    from harvester.db import make_engine

    # BEGIN IMMEDIATE on SQLite: a batch first reads which leases it holds, then writes; a
    # read transaction that later writes fails when another process wrote in between.
    engine = make_engine(url, immediate=True)
    try:
        while True:
            try:
                batch = inbox.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # kill -9 of the parent: whatever it had not sent stays pending
                continue
            if batch is None:
                return
            try:
                results = [ItemResult.from_tuple(fields) for fields in batch]
                outbox.put(("ok", write_batch(engine, job_id, endpoint, results, utcnow(), runner, archive_config)))
            except HarvesterError as e:
                outbox.put(("error", str(e)))
            except Exception as e:  # a bug: report it rather than hang the parent
                outbox.put(("error", f"internal error in the writer: {type(e).__name__}: {e}"))
    finally:
        engine.dispose()


def _die_with_parent() -> None:
    """Linux: have the kernel kill us when the parent dies, mid-transaction or not (it rolls back)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the inbox timeout notices the parent's death
