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
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import jobs
from harvester.client import ApiClient, ConnectError, Response, TransportError, id_path
from harvester.config import Config
from harvester.errors import ApiAuthError, ApiUnreachableError, HarvesterError, JobError, QuotaExhausted
from harvester.parse import ParseError, as_int, decode, lower_doi
from harvester.ratelimit import CircuitBreaker, RateLimiter, next_utc_midnight
from harvester.store import ItemResult, WriterProcess

logger = logging.getLogger(__name__)

BATCH_SIZE = 500  # results per transaction
BATCH_WAIT = 0.5  # seconds before a partial batch is written anyway
BATCH_BYTES = 8 << 20  # fetch bodies run to megabytes: bound the memory a batch holds
_DONE = object()

ProgressCallback = Callable[[dict[str, int]], None]


@dataclass
class RunOutcome:
    """How a run ended: the job's status, its item counts and the exit code."""

    job_id: int
    status: str  # finished, interrupted, paused, stopped
    counts: dict[str, int]
    exit_code: int
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
    processed: int = 0  # ... and of those, written
    requests: int = 0
    responses: int = 0  # any HTTP response at all: the host is reachable
    error: BaseException | None = None
    stop_reason: str | None = None
    abort: asyncio.Event = field(default_factory=asyncio.Event)


def fetch_query(options: dict[str, Any]) -> dict[str, str]:
    """A fetch job's stored options -> the endpoint's query parameters."""
    query = {}
    for name in ("include_sources", "exclude_sources", "include_sections"):
        if options.get(name):
            query[name] = ",".join(options[name])
    if options.get("post_types"):
        query["post_types"] = str(options["post_types"])
    return query


def request_for(job: jobs.Job, item: jobs.Item, fetch_options: dict[str, str] | None) -> tuple[str, dict[str, str] | None]:
    """The URL path and query parameters of one item: an id on Counts or Fetch, or a page of Citations."""
    if job.endpoint == "citations":
        query = {"num_results": str(job.params["num_results"]), "page": item.identifier}
        return f"/citations/{job.params['timeframe']}", query | (job.params.get("filters") or {})
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


HEARTBEAT = 15.0  # seconds; well inside jobs.STALE_AFTER, so a live run never looks dead


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


async def run_job(
    engine: Engine,
    job_id: int,
    config: Config,
    progress: ProgressCallback | None = None,
    stop: asyncio.Event | None = None,
    runner: str | None = None,
) -> RunOutcome:
    """Run (or resume) a job until every item is final or something stops it.

    `runner`: the identity to run it under (a nightly runs its steps under its own).
    """
    job = jobs.get_job(engine, job_id)
    if job.endpoint not in ("counts", "fetch", "citations"):
        raise JobError(f"job {job_id} is a {job.endpoint} job: run it with `harvester {job.endpoint}`")
    if job.endpoint not in config.api.endpoints:
        raise JobError(
            f"job {job_id} needs the {job.endpoint} endpoint, but [api] endpoints = {list(config.api.endpoints)} excludes it"
        )
    query = fetch_query(job.params.get("fetch") or {}) if job.endpoint == "fetch" else None
    runner = runner or jobs.new_runner_id()
    jobs.take_over(engine, job_id, runner)
    started = time.monotonic()
    state = _State(counts=jobs.item_counts(engine, job_id))
    limits = config.limits
    concurrency = max(1, limits.concurrency)
    limiter = RateLimiter(limits, config.api.tier)
    breaker = CircuitBreaker(cooldown=min(5.0, limits.max_outage / 4), max_outage=limits.max_outage)
    work: asyncio.Queue[Any] = asyncio.Queue(maxsize=concurrency * 2)
    # Bounded, so that fetching waits for a slow writer instead of piling bodies up in
    # memory; a batch's worth, so that the next batch is ready when the writer is.
    results: asyncio.Queue[Any] = asyncio.Queue(maxsize=BATCH_SIZE)
    # Claim about two minutes of work at a time: enough to keep the workers fed,
    # little enough that a shared job's leases stay fair.
    rate = limits.per_second if config.api.tier == "free" else (limits.max_per_second or 2000.0)
    claim_size = int(max(concurrency * 2, min(1000, rate * 120)))

    # A Citations job grows as it runs (each page adds the pages its total
    # implies), so its feeder looks again whenever a batch is written.
    grows = job.endpoint == "citations"
    written = asyncio.Event()

    def fail(exc: BaseException) -> None:
        if state.error is None:
            state.error = exc
        state.abort.set()

    async def feed() -> None:
        try:
            after = 0
            while True:
                # Read before claiming: if everything claimed was written by then, the claim saw every page added.
                written_before = state.processed
                items = await asyncio.to_thread(jobs.claim, engine, job_id, runner, after, claim_size)
                if not items:
                    if not grows or state.claimed == written_before:
                        break
                    written.clear()
                    await written.wait()
                    continue
                state.claimed += len(items)
                after = items[-1].line_no
                for item in items:
                    await work.put(item)
            for _ in range(concurrency):
                await work.put(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a database error while claiming stops the run cleanly
            fail(e)

    async def beat() -> None:
        # Limiter pauses and outages write nothing for minutes: the heartbeat must not depend on writes.
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await asyncio.to_thread(jobs.beat, engine, runner)
            except SQLAlchemyError as e:
                logger.warning("could not record the heartbeat: %s", e)

    async def fetch(item: jobs.Item) -> ItemResult:
        path, params = request_for(job, item, query)
        attempts = 0
        slow_429 = 1.0
        while True:
            if limiter.tweet_quota_spent:
                raise QuotaExhausted(next_utc_midnight(), "tweet-id")
            await breaker.admit()
            await limiter.acquire()
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
                limiter.observe(response.headers, job.endpoint)
                if status == 200:
                    try:
                        body = check_body(job.endpoint, response.body)
                    except ParseError as e:
                        error = f"unusable body: {e}"
                    else:
                        breaker.record(True)
                        # The writer parses the rest, in its own process.
                        note = None
                        returned = lower_doi(body.get("doi") or (body.get("citation") or {}).get("doi"))
                        if item.id_type == "doi" and returned and returned != item.identifier:
                            note = f"the API returned DOI {returned} for this id"
                        return ItemResult(item.id_type, item.identifier, "done", attempts + 1, 200, None, response.body, note)
                elif status in (401, 403):
                    raise ApiAuthError(status, job.endpoint, response.body.decode("utf-8", "replace"))
                elif status == 429:
                    breaker.record(True)  # an API that rate-limits is up
                    wait = retry_after(response)
                    quota = limiter.quota_error(response.headers, job.endpoint, wait)
                    if quota is not None:
                        raise quota
                    # A 429 is the server asking for patience, not a failure: it never counts as an attempt.
                    limiter.slow_down(wait if wait is not None else slow_429)
                    slow_429 = min(60.0, slow_429 * 2)
                    continue
                elif 400 <= status < 500:
                    breaker.record(True)
                    if status == 404:
                        return ItemResult(item.id_type, item.identifier, "not_found", attempts + 1, 404)
                    if job.endpoint == "citations" and item.identifier != "1" and status == 400:
                        # Past the last page (the listing shrank while we paged): the end, not a failure.
                        note = f"past the last page: {response.body.decode('utf-8', 'replace').strip()[:200]}"
                        return ItemResult(item.id_type, item.identifier, "not_found", attempts + 1, status, None, None, note)
                    text = response.body.decode("utf-8", "replace").strip()[:500]
                    return ItemResult(item.id_type, item.identifier, "failed", attempts + 1, status, f"HTTP {status}: {text}")
                else:
                    error = f"HTTP {status}"
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
            item = await work.get()
            if item is _DONE:
                return
            try:
                result = await fetch(item)
            except HarvesterError as e:
                fail(e)
                return
            await results.put(result)

    async def write() -> None:
        last_progress = 0.0
        while True:
            batch: list[ItemResult] = []
            finished = False
            deadline = time.monotonic() + BATCH_WAIT
            size = 0
            while len(batch) < BATCH_SIZE and size < BATCH_BYTES:
                timeout = deadline - time.monotonic()
                try:
                    got = await asyncio.wait_for(results.get(), timeout) if timeout > 0 else results.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if got is _DONE:
                    finished = True
                    break
                batch.append(got)
                size += len(got.body or b"")
            if batch:
                try:
                    outcome = await asyncio.to_thread(writer_process.write, batch)
                except HarvesterError as e:
                    fail(e)
                    return
                state.counts["pending"] -= len(batch)
                for status, n in outcome.items():
                    state.counts[status] += n
                state.processed += len(batch)
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
        if not writer.done():
            await results.put(_DONE)
        await writer
        return stopped

    if progress:
        progress(dict(state.counts))  # the baseline that rates and ETAs are measured from
    all_posts = job.endpoint == "fetch" and not any(
        (job.params.get("fetch") or {}).get(k) for k in ("include_sources", "exclude_sources", "include_sections")
    )
    writer_process = WriterProcess(engine.url.render_as_string(hide_password=False), job_id, job.endpoint, runner, all_posts, job.params)
    writer_process.start()
    try:
        async with ApiClient(config.api, concurrency) as client:
            interrupted = await supervise()
    finally:
        await asyncio.to_thread(writer_process.close)
    return _finish(engine, job_id, runner, state, interrupted, time.monotonic() - started)


def _finish(engine: Engine, job_id: int, runner: str, state: _State, interrupted: bool, elapsed: float) -> RunOutcome:
    try:
        counts = jobs.item_counts(engine, job_id)
    except SQLAlchemyError:
        counts = state.counts
    error = state.error
    resume_after = None
    if isinstance(error, QuotaExhausted):
        status, code, resume_after = "paused", 75, error.resume_at
    elif error is not None and getattr(error, "exit_code", 1) == 75:
        status, code = "paused", 75
    elif error is not None:
        status, code = "stopped", getattr(error, "exit_code", 1)
    elif interrupted:
        status, code = "interrupted", 130
    elif counts["pending"]:
        # Leased elsewhere or added meanwhile: not finished, but nothing failed either.
        status, code = "interrupted", 1
    else:
        status, code = "finished", 3 if counts["failed"] else 0
    message = str(error) if error is not None else None
    try:
        jobs.release(engine, job_id, runner, status, message, resume_after)
    except SQLAlchemyError as e:
        # The database may be the very thing that failed (disk full). The job then
        # still names this dead runner, which the next resume takes over.
        logger.warning("could not record the job's end: %s", e)
        status, code = "stopped", 1
    return RunOutcome(job_id, status, counts, code, message, elapsed, state.processed, state.requests)


def run(
    engine: Engine,
    job_id: int,
    config: Config,
    progress: ProgressCallback | None = None,
    runner: str | None = None,
) -> RunOutcome:
    """Run a job in a fresh event loop; SIGINT/SIGTERM stop it after a clean flush.

    A second signal cancels at once: still safe, since only committed batches
    count and every other item is still pending.
    """

    async def main() -> RunOutcome:
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
            return await run_job(engine, job_id, config, progress, stop, runner)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
