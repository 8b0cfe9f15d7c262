"""The run: a feeder claims items, N workers fetch them, one writer process commits (class Run).

    feed --(work, bounded)--> work x N --(results, bounded)--> write --> writer process (writer.py)

Every attempt waits for the circuit breaker and the rate limiter first. The writer
commits a batch's rows and its items' statuses in one transaction, so whatever
stops the run (Ctrl-C, kill -9, a 403, a spent quota, a full disk) leaves every
item either committed with its data or pending (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import clock, db, jobs, leases
from harvester.budget import SharedBudget
from harvester.client import ApiClient, ConnectError, TransportError
from harvester.config import Config, parse_duration
from harvester.endpoints import endpoint_for
from harvester.errors import ApiAuthError, ApiUnreachableError, DatabaseError, HarvesterError, JobError, QuotaExhausted, db_message
from harvester.log import redact
from harvester.ratelimit import CircuitBreaker, RateLimiter
from harvester.retry import RetryPolicy, Try, retry_after
from harvester.vocabulary import ENDPOINTS, ExitCode, ItemResult, ItemStatus, JobStatus, OutcomeKind
from harvester.writer import WriterProcess

logger = logging.getLogger(__name__)

BATCH_SIZE = 500  # results per transaction
BATCH_WAIT = 0.5  # seconds before a partial batch is written anyway
BATCH_BYTES = 8 << 20  # fetch bodies run to megabytes: bound the memory a batch holds
CLAIM_SECONDS = 2.0  # a claim holds about this much of a worker's work
MAX_CLAIM = 1000
WRITES_IN_FLIGHT = 2  # batches handed to the writer process and not yet committed
_DONE = object()

ProgressCallback = Callable[[dict[str, int], float | None], None]  # item counts, RateLimiter.throttled (progress.Reporter)
T = TypeVar("T")


@dataclass
class RunOutcome:
    """How a run ended: the job's status, its item counts and the exit code."""

    job_id: int
    status: JobStatus  # finished, interrupted, paused, stopped (running: other workers go on)
    counts: dict[str, int]
    exit_code: ExitCode
    message: str | None = None
    elapsed: float = 0.0
    processed: int = 0  # items finalized in this run
    requests: int = 0  # HTTP attempts in this run, retries and 429s included

    @property
    def rate(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0


HEARTBEAT = 15.0  # seconds; well inside leases.STALE_AFTER, so a live worker never looks gone


class Run:
    """One worker's run of one job: the feeder claims items, workers fetch them, the batcher hands them to the writer.

        feed --(work, bounded)--> work x N --(results, bounded)--> write --(a batch at a time)--> writer process

    A newcomer can follow one item through the methods in that order. What depends on
    the endpoint is asked of `self.endpoint` (endpoints.py); what the run shares between
    its tasks lives on the instance, and only these methods change it.
    """

    def __init__(
        self,
        engine: Engine,
        job: jobs.Job,
        config: Config,
        runner: str,
        progress: ProgressCallback | None = None,
        stop: asyncio.Event | None = None,
        drain: bool = True,
        command: str = "harvest",
    ) -> None:
        self.engine, self.job, self.config, self.runner = engine, job, config, runner
        self.progress, self.stop, self.drain = progress, stop, drain
        self.command = command  # what `status` shows this worker running
        self.endpoint = endpoint_for(job)
        limits = config.limits
        self.limits = limits
        self.retry = RetryPolicy.from_limits(limits)
        self.concurrency = max(1, limits.concurrency)
        self.lease = parse_duration(config.workers.lease)
        self.keeper = leases.LeaseKeeper(engine, runner, self.lease)
        self.limiter = RateLimiter(SharedBudget(engine, config.api.key, limits, config.api.tier), config.api.tier)
        self.breaker = CircuitBreaker(cooldown=min(5.0, limits.max_outage / 4), max_outage=limits.max_outage)
        # Not bounded by its size: the feeder claims again once less than low_water() is queued.
        self.work_queue: asyncio.Queue[Any] = asyncio.Queue()
        self.room = asyncio.Event()  # set by a worker that takes the queue below low_water()
        # Bounded, so that fetching waits for a slow writer instead of piling bodies up in
        # memory; a batch's worth, so that the next batch is ready when the writer is.
        self.results: asyncio.Queue[Any] = asyncio.Queue(maxsize=BATCH_SIZE)
        self.written = asyncio.Event()  # set whenever claimed items settle (written or dropped)
        self.abort = asyncio.Event()
        self.beat_every = min(HEARTBEAT, self.keeper.seconds / 3)
        # A free key's claims never need more than its rate; a commercial key's, its optional ceiling.
        self.ceiling = limits.per_second if config.api.tier == "free" else (limits.max_per_second or math.inf)
        self.counts: dict[str, int] = {}
        self.claimed = 0  # items this run claimed ...
        self.settled = 0  # ... and of those, written or dropped ...
        self.processed = 0  # ... written by this worker ...
        self.dropped = 0  # ... or dropped: its lease was lost
        self.requests = 0  # HTTP attempts, retries and 429s included
        self.responses = 0  # any HTTP response at all: the host is reachable
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.client: ApiClient | None = None  # open while the run runs
        self.writer: WriterProcess | None = None

    # -- the whole run ------------------------------------------------------------------------

    async def execute(self) -> RunOutcome:
        """Work the job until no item is left for this worker or something stops it."""
        leases.reap(self.engine)
        leases.register(self.engine, self.runner, self.command)
        leases.join(self.engine, self.job.id, self.runner)
        self.started = time.monotonic()
        self.counts = jobs.item_counts(self.engine, self.job.id)
        if self.progress:
            self.progress(dict(self.counts), None)  # the baseline that rates and ETAs are measured from
        # Started by the first claim that returns items (feed): a run with nothing to claim (a nightly's
        # empty step, a job other workers are finishing) spawns no process, which costs a second.
        self.writer = WriterProcess(
            self.engine.url.render_as_string(hide_password=False), self.job.id, self.endpoint, self.runner, self.config.archive
        )
        try:
            async with ApiClient(self.config.api, self.concurrency) as self.client:
                interrupted = await self.supervise()
        finally:
            await asyncio.to_thread(self.writer.close)
            try:
                await self.limiter.close()
            except SQLAlchemyError as e:
                logger.warning("could not return the unused part of the rate budget: %s", db_message(e))
        if self.dropped:
            logger.warning("%d items were dropped: this worker lost their leases (another worker has them)", self.dropped)
        return self.finish(interrupted)

    async def supervise(self) -> bool:
        """Run feeder, workers, writer and heartbeat until done or stopped; True if a signal stopped it."""
        feeder = asyncio.create_task(self.feed())
        workers = [asyncio.create_task(self.work()) for _ in range(self.concurrency)]
        writer = asyncio.create_task(self.write())
        heart = asyncio.create_task(self.beat())
        watchers = [asyncio.create_task(self.abort.wait())]
        if self.stop is not None:
            watchers.append(asyncio.create_task(self.stop.wait()))
        all_workers: asyncio.Future[list[None]] = asyncio.gather(*workers)
        waited: list[asyncio.Future[Any]] = [all_workers, *watchers]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if all_workers.done() and not all_workers.cancelled() and all_workers.exception() is not None:
            logger.debug("a worker crashed", exc_info=all_workers.exception())
            self.fail(all_workers.exception())  # type: ignore[arg-type]
        stopped = self.stop is not None and self.stop.is_set() and self.error is None
        for task in [feeder, *workers, *watchers, heart]:
            task.cancel()
        await asyncio.gather(feeder, *workers, *watchers, heart, all_workers, return_exceptions=True)
        # Results already fetched are written before we stop: nothing fetched is thrown away.
        # The queue may be full and the writer may fail on its batch meanwhile (a full disk):
        # then nobody takes the end marker, so waiting for the put alone would wait forever.
        end = asyncio.create_task(self.results.put(_DONE))
        await asyncio.wait([end, writer], return_when=asyncio.FIRST_COMPLETED)
        end.cancel()
        await writer
        return stopped

    def fail(self, exc: BaseException) -> None:
        """Stop the run on its first error; later ones are consequences."""
        if isinstance(exc, SQLAlchemyError):  # the budget's, a claim's or a lease's statement: one clear line
            exc = DatabaseError(f"cannot write to the database: {db_message(exc)}")
        if self.error is None:
            self.error = exc
        self.abort.set()

    # -- claiming -------------------------------------------------------------------------------

    def claim_size(self) -> int:
        """About CLAIM_SECONDS of this worker's work at the rate it has reached: enough to keep its
        requests fed, little enough that other workers find items to claim (a first claim of a
        thousand items left two more workers idle), never more than a third of a lease's worth."""
        elapsed = time.monotonic() - self.started
        rate = min(self.ceiling, self.settled / elapsed if elapsed > 1 else 0.0)
        return int(min(MAX_CLAIM, max(self.concurrency * 2, rate * min(CLAIM_SECONDS, self.keeper.seconds / 3))))

    def low_water(self) -> int:
        """Claim again when less than this is queued: half a claim, so that the next claim runs while
        the workers still have work (with a queue of twice the concurrency they ran dry while a claim
        waited for the writer's transaction), and no more, so that other workers find items to claim."""
        return max(self.concurrency * 2, self.claim_size() // 2)

    async def feed(self) -> None:
        """Claim items and queue them for the workers, until nothing is left to claim (or, with
        `drain`, until every item of the job is final, those of other workers included)."""
        try:
            while True:
                while self.work_queue.qsize() >= self.low_water():
                    self.room.clear()
                    await self.room.wait()
                # Cleared before the count is read: a batch written after this line wakes the wait below.
                self.written.clear()
                settled_before = self.settled
                items, generation = await self.keeper.claim(self.job.id, self.claim_size())
                if items:
                    assert self.writer is not None
                    self.writer.start()  # the first time (execute); it imports while the first requests go out
                    self.claimed += len(items)
                    for item in items:
                        await self.work_queue.put((item, generation))
                    continue
                if self.claimed > settled_before and (self.drain or self.endpoint.grows):
                    # Ours are still in flight: wait for them before asking the job (drain), or because
                    # once written they may add items (a Citations page adds its listing's next pages).
                    await self.wait_written()
                    continue
                if not self.drain:
                    break
                # Nothing to claim and nothing of ours in flight: the rest is held by other workers.
                # Their results, or their leases' end, settle it.
                if await asyncio.to_thread(pending, self.engine, self.job.id) == 0:
                    break
                await asyncio.sleep(min(5.0, max(0.2, self.keeper.seconds / 10)))
                await asyncio.to_thread(leases.reap, self.engine)
            for _ in range(self.concurrency):
                await self.work_queue.put(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a database error while claiming stops the run cleanly
            self.fail(e)

    async def wait_written(self) -> None:
        """Until a batch is written (or items dropped), at most a heartbeat's time."""
        try:
            await asyncio.wait_for(self.written.wait(), self.beat_every)
        except TimeoutError:
            pass

    async def beat(self) -> None:
        """Renew the heartbeat and the leases: limiter pauses and outages write nothing for minutes,
        so the heartbeat must not depend on writes."""
        while True:
            await asyncio.sleep(self.beat_every)
            try:
                await self.keeper.renew(self.job.id, self.requests)
            except SQLAlchemyError as e:
                logger.warning("could not record the heartbeat: %s", db_message(e))

    # -- fetching -------------------------------------------------------------------------------

    async def work(self) -> None:
        """One of `concurrency` workers: fetch queued items until the end marker."""
        while True:
            got = await self.work_queue.get()
            if got is _DONE:
                return
            if not self.room.is_set() and self.work_queue.qsize() < self.low_water():
                self.room.set()
            item, generation = got
            result = None
            if self.keeper.valid(generation):
                try:
                    result = await self.fetch(item, generation)
                except (HarvesterError, SQLAlchemyError) as e:
                    self.fail(e)
                    return
            if result is None:  # its lease is lost: another worker has it, or will
                self.settle(1, 1)
                continue
            await self.results.put((result, generation))

    async def fetch(self, item: jobs.Item, generation: int) -> ItemResult | None:
        """The item's final outcome, or None when this worker lost its lease (then it asks nothing
        more). The retry policy runs the attempts; each waits for the breaker and the rate limiter."""
        url = self.endpoint.url(item)
        answer = await self.retry.run(lambda limited: self.attempt(item, url, generation, limited))
        if answer is None:
            return None
        return ItemResult(
            item.id_type,
            item.identifier,
            ItemStatus(answer.kind),
            answer.attempts,
            answer.status,
            _redacted(answer.error),
            answer.body,
            answer.note,
        )

    async def attempt(self, item: jobs.Item, url: str, generation: int, limited: int) -> Try | None:
        """One request for the item and what its answer means (`limited`: 429s in a row before it);
        None when its lease is lost. Raises what stops the job: a refused key, a spent quota."""
        assert self.client is not None
        endpoint, limiter, breaker = self.endpoint, self.limiter, self.breaker
        if limiter.quota_spent is not None:
            raise QuotaExhausted(clock.next_midnight(), limiter.quota_spent)
        if not self.keeper.valid(generation):
            return None
        probe = await breaker.admit()
        try:
            await limiter.acquire()
        except BaseException:
            if probe:
                breaker.release()
            raise
        if not self.keeper.valid(generation):
            if probe:
                breaker.release()  # a probe that sent nothing must not hold the breaker shut
            return None
        self.requests += 1
        try:
            response = await self.client.get(url)
        except ConnectError as e:
            if self.responses == 0:
                # Nothing ever answered: a wrong URL or no network, not a flaky item.
                raise ApiUnreachableError(str(e)) from None
            return self._failed(str(e), None)
        except TransportError as e:
            return self._failed(str(e), None)
        self.responses += 1
        await limiter.observe(response.headers, endpoint.quotas)
        outcome = endpoint.classify(item, response.status, response.body)
        if outcome.kind is OutcomeKind.AUTH:
            raise ApiAuthError(response.status, endpoint.kind, response.body.decode("utf-8", "replace"))
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            breaker.record(True)  # an API that rate-limits is up
            wait = self.retry.rate_limited_wait(response.headers, limited)
            quota = await limiter.quota_error(response.headers, retry_after(response.headers), endpoint.quotas)
            if quota is not None:
                raise quota
            # A 429 is the server asking for patience, not a failure: it never counts as an attempt.
            await limiter.slow_down(wait)
            return Try(OutcomeKind.RATE_LIMITED, response.status)
        if outcome.kind is OutcomeKind.RETRY:
            return self._failed(outcome.error or f"HTTP {response.status}", response.status)
        breaker.record(True)
        # The writer parses the body, in its own process.
        body = response.body if outcome.kind is OutcomeKind.DONE else None
        return Try(outcome.kind, response.status, outcome.error, body, outcome.note)

    def _failed(self, error: str, status: int | None) -> Try:
        """A transient failure; while the breaker is open it is the API's outage, not the item's."""
        self.breaker.record(False)
        if not self.breaker.is_open:
            logger.debug("%s: %s; retrying", error, status)
        return Try(OutcomeKind.RETRY, status, error, counts=not self.breaker.is_open)

    # -- writing --------------------------------------------------------------------------------

    async def write(self) -> None:
        """Batch the results (BATCH_SIZE, BATCH_WAIT, BATCH_BYTES) and have the writer process commit
        each batch in one transaction; count what it wrote and report progress.

        The next batch is handed over while the writer commits the one before (WRITES_IN_FLIGHT):
        waiting for each commit before collecting the next left the writer idle a third of the
        time on a fast Counts harvest, and the writer is what limits it.
        """
        assert self.writer is not None
        in_flight: collections.deque[tuple[int, int]] = collections.deque()  # (results, taken) of each batch sent
        last_progress = 0.0
        while True:
            batch, taken, finished = await self.next_batch()
            if batch:
                try:
                    await asyncio.to_thread(self.writer.send, batch)
                except HarvesterError as e:
                    self.fail(e)
                    return
                in_flight.append((len(batch), taken))
            elif taken:  # every result taken was fetched under leases given up since: dropped
                self.settle(taken, taken)
            # Collect: the oldest batch once too many are out, or everything when the queue is quiet or at the end.
            while in_flight and (len(in_flight) >= WRITES_IN_FLIGHT or not batch or finished):
                sent, sent_taken = in_flight.popleft()
                try:
                    outcome = await asyncio.to_thread(self.writer.receive)
                except HarvesterError as e:
                    self.fail(e)
                    return
                lost = outcome.pop("lost", 0)
                self.counts["pending"] += outcome.pop("added", 0) - (sent - lost)  # added: a listing's next pages
                for status, n in outcome.items():
                    self.counts[status] += n
                self.processed += sent - lost
                self.settle(lost + sent_taken - sent, sent_taken)
            if self.progress and (finished or time.monotonic() - last_progress > 0.2):
                self.progress(dict(self.counts), self.limiter.throttled)
                last_progress = time.monotonic()
            if finished:
                return

    def settle(self, dropped: int, taken: int) -> None:
        """Items taken from the results queue are settled: written, or dropped (their lease was lost)."""
        self.dropped += dropped
        self.settled += taken
        self.written.set()

    async def next_batch(self) -> tuple[list[tuple[Any, ...]], int, bool]:
        """(the results to write, how many were taken from the queue, whether the end marker came)."""
        batch: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + BATCH_WAIT
        size = taken = 0
        while len(batch) < BATCH_SIZE and size < BATCH_BYTES:
            try:
                # What is queued already is taken without a timer: wait_for costs a task each time.
                got = self.results.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    got = await asyncio.wait_for(self.results.get(), timeout)
                except TimeoutError:
                    break
            if got is _DONE:
                return batch, taken, True
            result, generation = got
            taken += 1
            if generation != self.keeper.generation:
                continue  # fetched under leases given up since: not ours to write
            batch.append(result.as_tuple())
            size += len(result.body or b"")
        return batch, taken, False

    # -- the end --------------------------------------------------------------------------------

    def finish(self, interrupted: bool) -> RunOutcome:
        """Record how the run ended (the job's status, unless other workers still work it) and say so."""
        engine, job_id, runner, error = self.engine, self.job.id, self.runner, self.error
        resume_after = None
        status: JobStatus
        code: ExitCode
        if isinstance(error, QuotaExhausted):
            status, code, resume_after = JobStatus.PAUSED, ExitCode.PAUSED, error.resume_at
        elif error is not None and getattr(error, "exit_code", ExitCode.ERROR) == ExitCode.PAUSED:
            status, code = JobStatus.PAUSED, ExitCode.PAUSED
        elif error is not None:
            status, code = JobStatus.STOPPED, ExitCode(getattr(error, "exit_code", ExitCode.ERROR))
        elif interrupted:
            status, code = JobStatus.INTERRUPTED, ExitCode.INTERRUPTED
        else:
            status, code = JobStatus.FINISHED, ExitCode.OK
        message = str(error) if error is not None else None
        try:
            status = leases.leave(engine, job_id, runner, status, message, resume_after)
        except SQLAlchemyError as e:
            # The database may be the very thing that failed (disk full). The item leases
            # then end on their own, and the next resume or worker takes them.
            logger.warning("could not record the job's end: %s", db_message(e))
            status, code = JobStatus.STOPPED, ExitCode.ERROR
        try:
            counts = jobs.item_counts(engine, job_id)
        except SQLAlchemyError:
            counts = self.counts
        if code == ExitCode.OK:
            if status == JobStatus.FINISHED:
                code = ExitCode.SOME_FAILED if counts[ItemStatus.FAILED] else ExitCode.OK
            elif status == JobStatus.INTERRUPTED:
                code = ExitCode.ERROR  # items added meanwhile, or held by a worker that is gone: `resume` finishes them
        elapsed = time.monotonic() - self.started
        return RunOutcome(job_id, status, counts, code, message, elapsed, self.processed, self.requests)


def _redacted(error: str | None) -> str | None:
    """The writer process does not know the key: what the server echoed of it is hidden here."""
    return None if error is None else redact(error)


async def run_job(
    engine: Engine,
    job_id: int,
    config: Config,
    progress: ProgressCallback | None = None,
    stop: asyncio.Event | None = None,
    runner: str | None = None,
    drain: bool = True,
    command: str = "harvest",
) -> RunOutcome:
    """Work a job, as one of any number of workers, until no item is left for it or something stops it.

    `runner`: the identity to work it under (a nightly and the worker command keep
    one for all their jobs). `drain`: wait until every item is final, including
    those other workers hold (harvest, resume); without it, stop as soon as
    nothing is left to claim (the worker command, which then looks at other jobs).
    """
    job = jobs.get_job(engine, job_id)
    if job.endpoint not in ENDPOINTS:
        raise JobError(f"job {job_id} is a {job.endpoint} job: run it with `harvester {job.endpoint}`")
    if job.endpoint not in config.api.endpoints:
        raise JobError(f"job {job_id} needs the {job.endpoint} endpoint, but [api] endpoints = {list(config.api.endpoints)} excludes it")
    if job.status == JobStatus.PAUSED and job.resume_after is not None and job.resume_after > clock.utcnow():
        # Paused on a spent quota that has not reset yet: asking now would only draw 429s.
        raise QuotaExhausted(job.resume_after)
    jobs.record_api(engine, job_id, config.api.url, config.api.tier)  # the provenance the report and exports name
    return await Run(engine, job, config, runner or leases.new_runner_id(), progress, stop, drain, command).execute()


def pending(engine: Engine, job_id: int) -> int:
    return jobs.item_counts(engine, job_id)["pending"]


def run(
    engine: Engine,
    job_id: int,
    config: Config,
    progress: ProgressCallback | None = None,
    runner: str | None = None,
    command: str = "harvest",
) -> RunOutcome:
    """Work a job until every item is final, in a fresh event loop; SIGINT/SIGTERM stop it after a clean flush.

    Without `runner`, this process is a worker of its own for this run, and leaves `workers` at the end.
    """
    own = runner is None
    runner = runner or leases.new_runner_id()
    started = time.monotonic()
    try:
        return with_signals(lambda stop: run_job(engine, job_id, config, progress, stop, runner, command=command))
    except Interrupted:
        # A second signal cut the run short before Run.finish: record the end here, or the job
        # would go on looking `running` under a process that is gone (issue 17, item 12).
        return _quit_at_once(engine, job_id, runner, time.monotonic() - started)
    finally:
        if own:
            try:
                leases.unregister(engine, runner)
            except SQLAlchemyError as e:
                logger.warning("could not leave the workers table: %s", db_message(e))


class Interrupted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM stopped the run at once (with_signals), before the run recorded its end."""


def _quit_at_once(engine: Engine, job_id: int, runner: str, elapsed: float) -> RunOutcome:
    """The outcome of a run a second signal stopped: its leases go back and the job is `interrupted`
    (or stays with the other live workers that still run it). Only committed batches counted, so
    every item is final with its rows or pending: `resume` picks up the rest."""
    status = JobStatus.INTERRUPTED
    try:
        status = leases.leave(engine, job_id, runner, JobStatus.INTERRUPTED)
        counts = jobs.item_counts(engine, job_id)
    except SQLAlchemyError as e:
        logger.warning("could not record the job's end: %s", db_message(e))
        counts = dict.fromkeys(jobs.STATUSES, 0)
    return RunOutcome(job_id, status, counts, ExitCode.INTERRUPTED, elapsed=elapsed)


def with_signals(work: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `work(stop)` in a fresh event loop; the first SIGINT/SIGTERM sets `stop`.

    A second signal cancels every task at once and raises Interrupted (a KeyboardInterrupt):
    still safe, since only committed batches count and every other item is still pending; the
    caller records the job's end. Once a signal has come, later ones are ignored until the
    process exits: it is stopping already, and a KeyboardInterrupt raised in the middle of
    recording the job's end or printing the resume line would lose them.
    """
    import signal

    quit_at_once = False

    async def main() -> T:
        nonlocal quit_at_once
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                logger.warning("stopping: writing what was already fetched (press Ctrl-C again to quit at once)")
                stop.set()
            elif signals == 2 and task is not None and not task.done():
                db.stopping.set()  # a thread waiting for a lock another process holds gives up
                # Futures that gathered the cancelled tasks (the run's workers) end cancelled with
                # nobody left to look: that is the point, not an error to print with a traceback.
                default = loop.get_exception_handler()

                def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                    if isinstance(context.get("exception"), asyncio.CancelledError):
                        return
                    if default is not None:
                        default(loop, context)
                    else:
                        loop.default_exception_handler(context)

                loop.set_exception_handler(quiet)
                # Every task, not only this one: workers left running would use the HTTP session
                # and the writer while the run closes them, and die with errors at the loop's end.
                for other in asyncio.all_tasks(loop):
                    other.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await work(stop)
        except asyncio.CancelledError:
            if signals < 2:
                raise
            quit_at_once = True
            # Returned, not raised: a KeyboardInterrupt out of a task is re-raised by the event
            # loop itself, past asyncio.run's cleanup of the other tasks.
            return cast(T, None)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_IGN)

    result = run_loop(main())
    if quit_at_once:
        raise Interrupted
    return result


def run_loop(coro: Awaitable[T]) -> T:
    """asyncio.run, on uvloop where it is installed: aiohttp's request path is most of the
    main process's CPU time, and uvloop takes a share of it off (benchmarks/README.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]
