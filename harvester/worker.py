"""`harvester worker`: one more worker process on the jobs of a database.

It works the named jobs (default: every unfinished one, oldest first): each
time, the oldest job with an item it can claim, until nothing is left to
claim; then the next one. It ends when no item of those jobs is pending or
leased, or, with `wait`, keeps looking for new jobs (a service). Any number of
workers, on any number of machines sharing a PostgreSQL database, can run at
once: leases (leases.py) keep them off each other's items and the shared
budget (budget.py) keeps them, together, within the key's limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, or_, select

from harvester import clock, jobs, leases, pipeline, schema
from harvester.config import Config
from harvester.errors import QuotaExhausted
from harvester.pipeline import ProgressCallback, RunOutcome
from harvester.vocabulary import ENDPOINTS, ExitCode, ItemStatus, JobStatus

logger = logging.getLogger(__name__)

POLL = 1.0  # seconds between looks when every item left is another worker's (a count of pending items)
IDLE_POLL = 5.0  # seconds between looks for new jobs (--wait) when there is nothing at all to do


@dataclass
class WorkerOutcome:
    exit_code: ExitCode
    runs: list[RunOutcome] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)  # the jobs it looked at
    message: str | None = None


def candidates(engine: Engine, job_ids: list[int] | None, endpoints: tuple[str, ...]) -> list[jobs.Job]:
    """The unfinished jobs a worker may take, oldest first (all of them, or those named)."""
    j = schema.jobs.c
    query = select(j.id).where(j.status != JobStatus.FINISHED, j.endpoint.in_([e for e in ENDPOINTS if e in endpoints])).order_by(j.id)
    if job_ids:
        query = query.where(j.id.in_(job_ids))
    with engine.connect() as conn:
        ids = list(conn.execute(query).scalars())
    return [jobs.get_job(engine, i) for i in ids]


def claimable(engine: Engine, job_id: int) -> bool:
    """Has the job an item that is pending and not leased (or whose lease ended)?"""
    ji = schema.job_items.c
    with engine.connect() as conn:
        now = clock.db_now(conn)
        row = conn.execute(
            select(ji.line_no)
            .where(ji.job_id == job_id, ji.status == ItemStatus.PENDING, or_(ji.lease_until.is_(None), ji.lease_until < now))
            .limit(1)
        ).first()
    return row is not None


async def work(
    engine: Engine,
    config: Config,
    job_ids: list[int] | None,
    stop: asyncio.Event,
    progress: Callable[[int], ProgressCallback | None] | None = None,
    wait: bool = False,
    poll: float = POLL,
    idle_poll: float = IDLE_POLL,
) -> WorkerOutcome:
    """Work jobs until none has an item pending (or, with `wait`, until stopped)."""
    if job_ids:
        for job_id in job_ids:
            jobs.get_job(engine, job_id)  # a wrong id is an error, not an idle worker
    runner = leases.new_runner_id()
    await asyncio.to_thread(leases.register, engine, runner, "worker")
    outcome = WorkerOutcome(ExitCode.OK)
    seen: set[int] = set()
    try:
        while not stop.is_set():
            await asyncio.to_thread(leases.reap, engine)
            todo = await asyncio.to_thread(candidates, engine, job_ids, config.api.endpoints)
            seen.update(j.id for j in todo)
            now = clock.utcnow()
            paused = [j for j in todo if j.status == JobStatus.PAUSED and j.resume_after is not None and j.resume_after > now]
            ready = [j for j in todo if j not in paused]
            job = None
            for j in ready:
                # A job with nothing pending is run too: it has nothing to claim, and its last worker marks it finished.
                if await asyncio.to_thread(claimable, engine, j.id) or await asyncio.to_thread(pipeline.pending, engine, j.id) == 0:
                    job = j
                    break
            if job is not None:
                callback = progress(job.id) if progress else None
                try:
                    run = await pipeline.run_job(engine, job.id, config, callback, stop, runner, drain=False, command="worker")
                except QuotaExhausted as e:
                    run = RunOutcome(job.id, JobStatus.PAUSED, jobs.item_counts(engine, job.id), ExitCode.PAUSED, str(e))
                finally:
                    close = getattr(callback, "close", None)
                    if close is not None:
                        close()
                outcome.runs.append(run)
                # 'interrupted' here is only items still leased by a worker that is gone: look again.
                if run.status in (JobStatus.STOPPED, JobStatus.PAUSED) or run.exit_code == ExitCode.INTERRUPTED:
                    if run.exit_code == ExitCode.INTERRUPTED or not wait:
                        outcome.exit_code, outcome.message = run.exit_code, run.message
                        return outcome
                    logger.warning("job %d %s: %s; looking again in %.0fs", job.id, run.status, run.message, poll)
                    await _sleep(stop, poll)
                continue
            if not todo:
                if not wait:
                    break
                await _sleep(stop, idle_poll)
                continue
            if not wait and not ready:
                # Only paused jobs are left: resumable later, as a quota resets.
                first = min(paused, key=lambda j: j.resume_after or now)
                outcome.exit_code = ExitCode.PAUSED
                outcome.message = f"job {first.id} is paused until {first.resume_after:%Y-%m-%d %H:%M} UTC"
                return outcome
            # Every item left is leased by another worker: their results, or their leases' end, settle it.
            await _sleep(stop, poll)
        if stop.is_set():
            outcome.exit_code = ExitCode.INTERRUPTED
    finally:
        outcome.jobs = sorted(seen)
        await asyncio.to_thread(leases.unregister, engine, runner)
    if outcome.exit_code == ExitCode.OK and any(jobs.item_counts(engine, j)[ItemStatus.FAILED] for j in outcome.jobs):
        outcome.exit_code = ExitCode.SOME_FAILED
    return outcome


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
