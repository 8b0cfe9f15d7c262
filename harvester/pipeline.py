"""The run: a feeder claims items, N workers fetch them, one writer commits.

    feeder --(work queue, bounded)--> workers --(results)--> writer (thread)

Every attempt waits for the rate limiter first. The writer commits a batch's
rows and its items' statuses in one transaction, so whatever stops the run
(Ctrl-C, kill -9, a 403, a spent quota, a full disk) leaves every item either
committed with its data or pending.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import jobs, leases
from harvester.budget import SharedBudget
from harvester.client import ApiClient, ConnectError, Response, TransportError, id_path
from harvester.config import Config, parse_duration
from harvester.errors import (
    ApiAuthError,
    ApiUnreachableError,
    DatabaseError,
    ExitCode,
    HarvesterError,
    ItemStatus,
    JobError,
    JobStatus,
    QuotaExhausted,
    db_message,
)
from harvester.log import redact
from harvester.parse import ParseError, as_int, decode, lower_doi
from harvester.ratelimit import CircuitBreaker, RateLimiter, next_utc_midnight
from harvester.store import ItemResult, lists_every_post
from harvester.writer import WriterProcess

logger = logging.getLogger(__name__)

BATCH_SIZE = 500  # results per transaction
BATCH_WAIT = 0.5  # seconds before a partial batch is written anyway
BATCH_BYTES = 8 << 20  # fetch bodies run to megabytes: bound the memory a batch holds
CLAIM_SECONDS = 2.0  # a claim holds about this much of a worker's work
MAX_CLAIM = 1000
_DONE = object()

ProgressCallback = Callable[[dict[str, int]], None]
T = TypeVar("T")


@dataclass
class RunOutcome:
    """How a run ended: the job's status, its item counts and the exit code."""

    job_id: int
    status: str  # a JobStatus: finished, interrupted, paused, stopped
    counts: dict[str, int]
    exit_code: int  # an ExitCode
    message: str | None = None
    elapsed: float = 0.0
    processed: int = 0  # items finalized in this run
    requests: int = 0  # HTTP attempts in this run, retries and 429s included

    @property
    def rate(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class _State:
    counts: dict[str, int]
    claimed: int = 0  # items this run claimed ...
    settled: int = 0  # ... and of those, written or dropped ...
    processed: int = 0  # ... written by this worker ...
    dropped: int = 0  # ... or dropped: its lease was lost
    requests: int = 0
    responses: int = 0  # any HTTP response at all: the host is reachable
    error: BaseException | None = None
    stop_reason: str | None = None
    abort: asyncio.Event = field(default_factory=asyncio.Event)


def fetch_query(options: jobs.FetchOptions | None) -> dict[str, str]:
    """A fetch job's stored options -> the endpoint's query parameters."""
    if options is None:
        return {}
    lists = {
        "include_sources": options.include_sources,
        "exclude_sources": options.exclude_sources,
        "include_sections": options.include_sections,
    }
    query = {name: ",".join(values) for name, values in lists.items() if values}
    if options.post_types:
        query["post_types"] = options.post_types
    return query


def request_for(job: jobs.Job, item: jobs.Item, fetch_options: dict[str, str] | None) -> tuple[str, dict[str, str] | None]:
    """The URL path and query parameters of one item: an id on Counts or Fetch, or a page of Citations."""
    if isinstance(job.params, jobs.CitationsParams):
        query = {"num_results": str(job.params.num_results), "page": item.identifier}
        return f"/citations/{job.params.timeframe}", query | job.params.filters
    return id_path(job.endpoint, item.id_type, item.identifier), fetch_options


def check_body(endpoint: str, raw: bytes) -> dict[str, Any]:
    """Decode a 200's body and check that it is the kind of object the endpoint sends (else ParseError: retried)."""
    body = decode(raw)
    if endpoint == "citations":
        if not isinstance(body.get("results"), list):
            raise ParseError("the page has no list of results")
    elif as_int(body.get("altmetric_id")) is None:
        raise ParseError("the body has no altmetric_id")
    return body


@dataclass(frozen=True)
class Outcome:
    """What one HTTP answer means for its item (docs/architecture.md, HTTP outcomes).

    kind: done, not_found, failed (final); retry (counts as an attempt); rate_limited
    (waits, never an attempt); auth (stops the job).
    """

    kind: str
    error: str | None = None
    note: str | None = None


def classify(endpoint: str, item: jobs.Item, status: int, raw: bytes) -> Outcome:
    """The HTTP outcome table, as a pure function of the answer."""
    if status == 200:
        try:
            body = check_body(endpoint, raw)
        except ParseError as e:
            return Outcome("retry", f"unusable body: {e}")
        returned = lower_doi(body.get("doi") or (body.get("citation") or {}).get("doi"))
        if item.id_type == "doi" and returned and returned != item.identifier:
            return Outcome("done", note=f"the API returned DOI {returned} for this id")
        return Outcome("done")
    if status in (401, 403):
        return Outcome("auth")
    if status == 429:
        return Outcome("rate_limited")
    if status == 404:
        return Outcome("not_found")
    if endpoint == "citations" and item.identifier != "1" and status == 400:
        # Past the last page (the listing shrank while we paged): the end, not a failure.
        return Outcome("not_found", note=f"past the last page: {raw.decode('utf-8', 'replace').strip()[:200]}")
    if 400 <= status < 500:
        return Outcome("failed", f"HTTP {status}: {raw.decode('utf-8', 'replace').strip()[:500]}")
    return Outcome("retry", f"HTTP {status}")


def backoff(attempt: int, base: float, cap: float) -> float:
    """Capped exponential backoff with full jitter in the upper half."""
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


def retry_after(response: Response) -> float | None:
    """Seconds from a Retry-After header (delta or HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        if when is None:
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


HEARTBEAT = 15.0  # seconds; well inside leases.STALE_AFTER, so a live worker never looks gone


def boottime() -> float:
    """Seconds on a clock that keeps counting while the machine sleeps (CLOCK_MONOTONIC stops):
    a laptop suspended past its leases must notice it lost them."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


class LeaseKeeper:
    """How long this worker may still trust its leases, by its own clock.

    The database renews leases at every heartbeat; locally, each renewal (or the
    first claim) is trusted for the lease minus a margin, counted from before
    the statement was sent. Past that (the process was frozen, suspended or cut
    off), every item it held is dropped, unrequested and unwritten: another
    worker may have it by now. A new generation of claims then starts.
    """

    def __init__(self, lease: timedelta) -> None:
        self.seconds = lease.total_seconds()
        self.margin = min(max(0.5, 0.1 * self.seconds), self.seconds / 2)
        self.valid_until: float | None = None  # boottime(); None while nothing is held
        self.generation = 0
        self.lock = asyncio.Lock()  # claims, renewals and the release after a lapse never interleave

    def valid(self, generation: int) -> bool:
        return generation == self.generation and self.valid_until is not None and boottime() < self.valid_until

    def lapsed(self) -> bool:
        return self.valid_until is not None and boottime() >= self.valid_until

    def trusted_from(self, started: float, renewal: bool) -> None:
        if renewal or self.valid_until is None:
            self.valid_until = started + self.seconds - self.margin

    def lapse(self) -> None:
        self.generation += 1
        self.valid_until = None


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
    if job.endpoint not in ("counts", "fetch", "citations"):
        raise JobError(f"job {job_id} is a {job.endpoint} job: run it with `harvester {job.endpoint}`")
    if job.endpoint not in config.api.endpoints:
        raise JobError(
            f"job {job_id} needs the {job.endpoint} endpoint, but [api] endpoints = {list(config.api.endpoints)} excludes it"
        )
    if job.status == "paused" and job.resume_after is not None and job.resume_after > jobs.utcnow():
        # Paused on a spent quota that has not reset yet: asking now would only draw 429s.
        raise QuotaExhausted(job.resume_after)
    query = fetch_query(job.fetch) if job.endpoint == "fetch" else None
    runner = runner or jobs.new_runner_id()
    lease = parse_duration(config.workers.lease)
    leases.reap(engine)
    leases.register(engine, runner, command)
    budget = SharedBudget(engine, config.api.key, config.limits, config.api.tier)
    leases.join(engine, job_id, runner)
    started = time.monotonic()
    state = _State(counts=jobs.item_counts(engine, job_id))
    limits = config.limits
    concurrency = max(1, limits.concurrency)
    limiter = RateLimiter(budget, config.api.tier)
    keeper = LeaseKeeper(lease)
    breaker = CircuitBreaker(cooldown=min(5.0, limits.max_outage / 4), max_outage=limits.max_outage)
    work: asyncio.Queue[Any] = asyncio.Queue(maxsize=concurrency * 2)
    # Bounded, so that fetching waits for a slow writer instead of piling bodies up in
    # memory; a batch's worth, so that the next batch is ready when the writer is.
    results: asyncio.Queue[Any] = asyncio.Queue(maxsize=BATCH_SIZE)
    # Claim about CLAIM_SECONDS of work at a time, at the rate this worker has reached so far:
    # enough to keep its requests fed, little enough that other workers find items to claim
    # (a first claim of a thousand items left two more workers idle), and never more than a
    # third of a lease's worth.
    ceiling = limits.per_second if config.api.tier == "free" else (limits.max_per_second or math.inf)

    def claim_size() -> int:
        elapsed = time.monotonic() - started
        rate = min(ceiling, state.settled / elapsed if elapsed > 1 else 0.0)
        return int(min(MAX_CLAIM, max(concurrency * 2, rate * min(CLAIM_SECONDS, keeper.seconds / 3))))
    beat_every = min(HEARTBEAT, keeper.seconds / 3)
    written = asyncio.Event()

    def fail(exc: BaseException) -> None:
        if isinstance(exc, SQLAlchemyError):  # the budget's, a claim's or a lease's statement: one clear line
            exc = DatabaseError(f"cannot write to the database: {db_message(exc)}")
        if state.error is None:
            state.error = exc
        state.abort.set()

    async def check_lapse() -> None:
        """Under keeper.lock: after a lapse, give every lease back before claiming or renewing again."""
        if keeper.lapsed():
            keeper.lapse()
            logger.warning(
                "this worker was held up longer than its lease (%s): it drops the items it held; other workers take them",
                config.workers.lease,
            )
            await asyncio.to_thread(leases.release_all, engine, runner)

    async def feed() -> None:
        try:
            while True:
                # Cleared before the count is read: a batch written after this line wakes the wait below.
                written.clear()
                settled_before = state.settled
                async with keeper.lock:
                    await check_lapse()
                    claimed_at = boottime()
                    items = await asyncio.to_thread(leases.claim, engine, job_id, runner, claim_size(), lease)
                    if items:
                        keeper.trusted_from(claimed_at, renewal=False)
                    generation = keeper.generation
                if items:
                    state.claimed += len(items)
                    for item in items:
                        await work.put((item, generation))
                    continue
                if state.claimed > settled_before:
                    # Ours are still in flight; once written, a Citations page may have added pages.
                    try:
                        await asyncio.wait_for(written.wait(), beat_every)
                    except TimeoutError:
                        pass
                    continue
                if not drain:
                    break
                # Nothing to claim and nothing of ours in flight: the rest is held by other workers.
                # Their results, or their leases' end, settle it.
                if await asyncio.to_thread(pending, engine, job_id) == 0:
                    break
                await asyncio.sleep(min(5.0, max(0.2, keeper.seconds / 10)))
                await asyncio.to_thread(leases.reap, engine)
            for _ in range(concurrency):
                await work.put(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a database error while claiming stops the run cleanly
            fail(e)

    async def beat() -> None:
        # Limiter pauses and outages write nothing for minutes: the heartbeat must not depend on writes.
        while True:
            await asyncio.sleep(beat_every)
            try:
                async with keeper.lock:
                    await check_lapse()
                    renewed_at = boottime()
                    await asyncio.to_thread(leases.renew, engine, runner, job_id, lease, state.processed, state.requests)
                    if keeper.valid_until is not None:
                        keeper.trusted_from(renewed_at, renewal=True)
            except SQLAlchemyError as e:
                logger.warning("could not record the heartbeat: %s", db_message(e))

    async def fetch(item: jobs.Item, generation: int) -> ItemResult | None:
        """The item's final outcome, or None when this worker lost its lease (then it asks nothing more)."""
        path, params = request_for(job, item, query)
        attempts = 0
        slow_429 = 1.0
        while True:
            if limiter.tweet_quota_spent:
                raise QuotaExhausted(next_utc_midnight(), "tweet-id")
            await breaker.admit()
            await limiter.acquire()
            if not keeper.valid(generation):
                return None
            state.requests += 1
            status: int | None = None
            try:
                response = await client.get(path, params)
            except ConnectError as e:
                if state.responses == 0:
                    # Nothing ever answered: a wrong URL or no network, not a flaky item.
                    raise ApiUnreachableError(str(e)) from None
                error = str(e)
            except TransportError as e:
                error = str(e)
            else:
                state.responses += 1
                status = response.status
                await limiter.observe(response.headers, job.endpoint)
                outcome = classify(job.endpoint, item, status, response.body)
                if outcome.kind == "auth":
                    raise ApiAuthError(status, job.endpoint, response.body.decode("utf-8", "replace"))
                if outcome.kind == "rate_limited":
                    breaker.record(True)  # an API that rate-limits is up
                    wait = retry_after(response)
                    quota = await limiter.quota_error(response.headers, job.endpoint, wait)
                    if quota is not None:
                        raise quota
                    # A 429 is the server asking for patience, not a failure: it never counts as an attempt.
                    await limiter.slow_down(wait if wait is not None else slow_429)
                    slow_429 = min(60.0, slow_429 * 2)
                    continue
                if outcome.kind != "retry":
                    breaker.record(True)
                    # The writer parses the body, in its own process.
                    body = response.body if outcome.kind == "done" else None
                    return ItemResult(item.id_type, item.identifier, outcome.kind, attempts + 1, status, outcome.error, body, outcome.note)
                error = outcome.error or f"HTTP {status}"
            breaker.record(False)
            if breaker.is_open:
                continue  # an outage, not this item's fault: the attempt does not count
            attempts += 1
            if attempts >= limits.max_attempts:
                return ItemResult(item.id_type, item.identifier, "failed", attempts, status, error)
            logger.debug("%s %s: %s; retry %d", item.id_type, item.identifier, error, attempts)
            await asyncio.sleep(backoff(attempts, limits.backoff_base, limits.backoff_max))

    async def worker() -> None:
        while True:
            got = await work.get()
            if got is _DONE:
                return
            item, generation = got
            result = None
            if keeper.valid(generation):
                try:
                    result = await fetch(item, generation)
                except (HarvesterError, SQLAlchemyError) as e:
                    fail(e)
                    return
            if result is None:  # its lease is lost: another worker has it, or will
                state.dropped += 1
                state.settled += 1
                written.set()
                continue
            if result.error is not None:
                # The writer process does not know the key: what the server echoed of it is hidden here.
                result.error = redact(result.error)
            await results.put((result, generation))

    async def write() -> None:
        last_progress = 0.0
        while True:
            batch: list[ItemResult] = []
            finished = False
            deadline = time.monotonic() + BATCH_WAIT
            size = taken = 0
            while len(batch) < BATCH_SIZE and size < BATCH_BYTES:
                timeout = deadline - time.monotonic()
                try:
                    got = await asyncio.wait_for(results.get(), timeout) if timeout > 0 else results.get_nowait()
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if got is _DONE:
                    finished = True
                    break
                result, generation = got
                taken += 1
                if generation != keeper.generation:
                    continue  # fetched under leases given up since: not ours to write
                batch.append(result)
                size += len(result.body or b"")
            if batch:
                try:
                    outcome = await asyncio.to_thread(writer_process.write, batch)
                except HarvesterError as e:
                    fail(e)
                    return
                lost = outcome.pop("lost", 0)
                state.counts["pending"] -= len(batch) - lost
                for status, n in outcome.items():
                    state.counts[status] += n
                state.processed += len(batch) - lost
                state.dropped += lost
            if taken:
                state.dropped += taken - len(batch)
                state.settled += taken
                written.set()
            if progress and (finished or time.monotonic() - last_progress > 0.2):
                progress(dict(state.counts))
                last_progress = time.monotonic()
            if finished:
                return

    async def supervise() -> bool:
        """Run feeder, workers and writer until done or stopped; True if a signal stopped it."""
        feeder = asyncio.create_task(feed())
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        writer = asyncio.create_task(write())
        heart = asyncio.create_task(beat())
        watchers = [asyncio.create_task(state.abort.wait())]
        if stop is not None:
            watchers.append(asyncio.create_task(stop.wait()))
        all_workers: asyncio.Future[list[None]] = asyncio.gather(*workers)
        waited: list[asyncio.Future[Any]] = [all_workers, *watchers]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if all_workers.done() and not all_workers.cancelled() and all_workers.exception() is not None:
            logger.debug("a worker crashed", exc_info=all_workers.exception())
            fail(all_workers.exception())  # type: ignore[arg-type]
        stopped = stop is not None and stop.is_set() and state.error is None
        for task in [feeder, *workers, *watchers, heart]:
            task.cancel()
        await asyncio.gather(feeder, *workers, *watchers, heart, all_workers, return_exceptions=True)
        # Results already fetched are written before we stop: nothing fetched is thrown away.
        # The queue may be full and the writer may fail on its batch meanwhile (a full disk):
        # then nobody takes the end marker, so waiting for the put alone would wait forever.
        end = asyncio.create_task(results.put(_DONE))
        await asyncio.wait([end, writer], return_when=asyncio.FIRST_COMPLETED)
        end.cancel()
        await writer
        return stopped

    if progress:
        progress(dict(state.counts))  # the baseline that rates and ETAs are measured from
    all_posts = job.endpoint == "fetch" and lists_every_post(job.fetch)
    writer_process = WriterProcess(
        engine.url.render_as_string(hide_password=False), job_id, job.endpoint, runner, all_posts, job.params, config.archive
    )
    writer_process.start()
    try:
        async with ApiClient(config.api, concurrency) as client:
            interrupted = await supervise()
    finally:
        await asyncio.to_thread(writer_process.close)
        try:
            await limiter.close()
        except SQLAlchemyError as e:
            logger.warning("could not return the unused part of the rate budget: %s", db_message(e))
    if state.dropped:
        logger.warning("%d items were dropped: this worker lost their leases (another worker has them)", state.dropped)
    return _finish(engine, job_id, runner, state, interrupted, time.monotonic() - started)


def pending(engine: Engine, job_id: int) -> int:
    return jobs.item_counts(engine, job_id)["pending"]


def _finish(engine: Engine, job_id: int, runner: str, state: _State, interrupted: bool, elapsed: float) -> RunOutcome:
    error = state.error
    resume_after = None
    status: str
    code: int
    if isinstance(error, QuotaExhausted):
        status, code, resume_after = JobStatus.PAUSED, ExitCode.PAUSED, error.resume_at
    elif error is not None and getattr(error, "exit_code", ExitCode.ERROR) == ExitCode.PAUSED:
        status, code = JobStatus.PAUSED, ExitCode.PAUSED
    elif error is not None:
        status, code = JobStatus.STOPPED, getattr(error, "exit_code", ExitCode.ERROR)
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
        counts = state.counts
    if code == ExitCode.OK:
        if status == JobStatus.FINISHED:
            code = ExitCode.SOME_FAILED if counts[ItemStatus.FAILED] else ExitCode.OK
        elif status == JobStatus.INTERRUPTED:
            code = ExitCode.ERROR  # items added meanwhile, or held by a worker that is gone: `resume` finishes them
    return RunOutcome(job_id, status, counts, code, message, elapsed, state.processed, state.requests)


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
    runner = runner or jobs.new_runner_id()
    try:
        return with_signals(lambda stop: run_job(engine, job_id, config, progress, stop, runner, command=command))
    finally:
        if own:
            try:
                leases.unregister(engine, runner)
            except SQLAlchemyError as e:
                logger.warning("could not leave the workers table: %s", db_message(e))


def with_signals(work: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `work(stop)` in a fresh event loop; the first SIGINT/SIGTERM sets `stop`.

    A second signal cancels at once: still safe, since only committed batches
    count and every other item is still pending.
    """

    async def main() -> T:
        import signal

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
            elif task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await work(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return run_loop(main())


def run_loop(coro: Awaitable[T]) -> T:
    """asyncio.run, on uvloop where it is installed: aiohttp's request path is most of the
    main process's CPU time, and uvloop takes a share of it off (benchmarks/README.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]
