"""The `harvester` command: thin click commands over importable functions.

Known failures become one line on stderr and an exit code (docs/architecture.md,
exit codes); tracebacks only with -v, and always with the key redacted.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import __version__, dryrun, endpoints, jobs, leases, pipeline
from harvester import nightly as nightly_module
from harvester.config import MAX_NUM_RESULTS, TIMEFRAMES, Config, citation_filters, filters_text, load_config
from harvester.db import current_revision, head_revision, open_database, sqlite_path, unwritable
from harvester.errors import DatabaseError, HarvesterError, db_message
from harvester.ids import INPUT_ID_TYPES, describe_rejects
from harvester.log import hide_password, redact, register_secret, setup_logging
from harvester.params import CitationsParams, HarvestParams, NightlyParams
from harvester.progress import Reporter, describe, format_eta
from harvester.vocabulary import ENDPOINTS, ID_ENDPOINTS, ExitCode, ItemStatus, JobKind, JobStatus

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What the group's options give every command: lazily loaded config and database."""

    def __init__(self, config_path: str | None, database: str | None, verbosity: int) -> None:
        self.config_path = config_path
        self.database = database
        self.verbosity = verbosity
        self._config: Config | None = None

    def config(self, **overrides: Any) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, overrides={"database.url": self.database})
            register_secret(self._config.api.key)
        return self._config.with_overrides(overrides) if overrides else self._config

    def engine(self, must_exist: bool = False) -> Engine:
        """Open (and migrate) the database; read-only commands must not create an empty one."""
        url = self.config().database.url
        if must_exist:
            path = sqlite_path(url)
            if path is not None and not path.exists():
                raise HarvesterError(f"there is no database at {path} (choose one with --database URL)")
        return open_database(url)

    def command(self, *args: str) -> str:
        """A command line to print (resume, worker, status ...): with the --config and --database this
        one was given, as absolute paths, so that it works as pasted from another folder or from cron."""
        parts = ["harvester"]
        if self.config_path:
            parts += ["--config", os.path.abspath(self.config_path)]
        if self.database:
            path = sqlite_path(self.database)
            # A password shown as *** makes the line need an edit, but it ends up in logs and terminals.
            parts += ["--database", f"sqlite:///{path.resolve()}" if path is not None else hide_password(self.database)]
        return " ".join(shlex.quote(p) for p in [*parts, *args])

    def resume_command(self, job_id: int) -> str:
        return self.command("resume", str(job_id))

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    def progress(self, no_progress: bool) -> bool:
        """Progress on stderr unless --no-progress or -q (errors only)."""
        return not no_progress and not self.quiet

    def info(self, message: str) -> None:
        """A note on stderr; -q keeps only errors."""
        if not self.quiet:
            click.echo(message, err=True)


def handle_errors(func: F) -> F:
    """Turn expected errors into one line + exit code; hide tracebacks unless -v."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HarvesterError as e:
            _debug_traceback()
            why = _unwritable() if isinstance(e, DatabaseError) else None
            click.echo(f"{e.label}: {redact(why or str(e))}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(ExitCode.INTERRUPTED)
        except SQLAlchemyError as e:  # locked, full, gone, refused: the driver's line says which
            _debug_traceback()
            click.echo(f"Error: {redact(_unwritable() or 'database error: ' + db_message(e))}", err=True)
            sys.exit(ExitCode.ERROR)
        except Exception as e:  # a bug: still one line, still no key
            _debug_traceback()
            click.echo(f"Error: internal error: {redact(f'{type(e).__name__}: {e}')} (run with -v for details)", err=True)
            sys.exit(ExitCode.ERROR)

    return wrapper  # type: ignore[return-value]


def _unwritable() -> str | None:
    """After a database error: the SQLite file or folder that cannot be written, and why."""
    state = click.get_current_context().find_object(State)
    try:
        return None if state is None else unwritable(state.config().database.url)
    except HarvesterError:
        return None


def _debug_traceback() -> None:
    state = click.get_current_context().find_object(State)
    if state is not None and state.verbosity > 0:
        click.echo(redact(traceback.format_exc()), err=True)


pass_state = click.make_pass_decorator(State)


def _late_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command: it counts as if given before it."""
    state = ctx.find_object(State)
    if state is None or value in (None, 0, False):
        return
    if param.name == "config_path":
        state.config_path = value
    elif param.name == "database":
        state.database = value
    else:
        state.verbosity = -1 if param.name == "quiet" else max(state.verbosity, 0) + int(value)
        setup_logging(state.verbosity)


def _late_options() -> list[click.Parameter]:
    # Hidden: `harvester COMMAND --help` stays about the command; `harvester --help` lists these.
    late: dict[str, Any] = {"expose_value": False, "callback": _late_option, "hidden": True, "help": "As before the command."}
    return [
        click.Option(["--config", "config_path"], **late),
        click.Option(["--database"], **late),
        click.Option(["-v", "--verbose"], count=True, **late),
        click.Option(["-q", "--quiet"], is_flag=True, **late),
    ]


class HarvesterGroup(click.Group):
    """Every command also takes the global options after its name: `harvester harvest --config x` is
    how people write cron lines and paste hints, and click alone would answer "No such option"."""

    group_class = type  # `db` is one too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(_late_options())
        super().add_command(cmd, name)


@click.group(cls=HarvesterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harvester")
@click.option("--config", "config_path", metavar="FILE", help="TOML config file (default: $HARVESTER_CONFIG, else ./harvester.toml).")
@click.option("--database", metavar="URL", help="SQLAlchemy database URL (default: sqlite:///harvest.db).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, database: str | None, verbose: int, quiet: bool) -> None:
    """Harvest the Altmetric Details Page API in bulk into a SQL database.

    \b
    Quick start:
      harvester demo                      # fake API + sample harvest into ./demo.db
      ALTMETRIC_API_KEY=... harvester harvest dois.txt
      harvester status
    """
    verbosity = -1 if quiet else verbose
    setup_logging(verbosity)
    ctx.obj = State(config_path, database, verbosity)


@cli.group()
def db() -> None:
    """Database schema: upgrade or show the migration revision."""


@db.command("upgrade")
@pass_state
@handle_errors
def db_upgrade(state: State) -> None:
    """Upgrade the database to the newest schema (every command does this first).

    \b
    Example:
      harvester --database sqlite:///harvest.db db upgrade
    """
    engine = state.engine()
    click.echo(f"database at revision {current_revision(engine)}")


@db.command("current")
@pass_state
@handle_errors
def db_current(state: State) -> None:
    """Show the database's schema revision and the newest one."""
    from harvester.db import make_engine

    engine = make_engine(state.config().database.url)
    click.echo(f"current: {current_revision(engine) or '(empty)'}\nhead:    {head_revision()}")


def _run_and_report(
    state: State, engine: Engine, job_id: int, progress: bool, config: Config | None = None, command: str = "harvest", as_json: bool = False
) -> None:
    """Run a job, and the job it waits for or the follow-up it feeds (a citations job with --then)."""
    config = config or state.config()
    runs: list[pipeline.RunOutcome] = []
    for job in jobs.chain(engine, jobs.get_job(engine, job_id)):
        if job.status == JobStatus.FINISHED:
            continue
        outcome = _run_step(state, engine, job.id, progress and state.progress(False), config, command)
        _print_outcome(state, outcome)
        runs.append(outcome)
        if outcome.status != JobStatus.FINISHED:
            break
    last = runs[-1] if runs else None
    code = (
        last.exit_code if last is not None and last.status != JobStatus.FINISHED else max((r.exit_code for r in runs), default=ExitCode.OK)
    )
    if as_json:
        click.echo(_json(_runs_outcome(state, runs, code)))
    sys.exit(code)


def _runs_outcome(
    state: State, runs: list[pipeline.RunOutcome], exit_code: int, message: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The --json outcome of harvest, resume and worker: the last run, totals over all, every run."""
    last = runs[-1] if runs else None
    stopped = [r for r in runs if r.status not in (JobStatus.FINISHED, JobStatus.RUNNING)]
    return _outcome(
        state,
        job_id=last.job_id if last else None,
        status=last.status if last else JobStatus.FINISHED,
        counts=last.counts if last else {},
        exit_code=exit_code,
        requests=sum(r.requests for r in runs),
        elapsed=sum(r.elapsed for r in runs),
        message=message or (last.message if last else None),
        resume_job=stopped[-1].job_id if stopped else None,
        runs=[
            {
                "job_id": r.job_id,
                "status": r.status,
                "counts": r.counts,
                "exit_code": r.exit_code,
                "requests": r.requests,
                "elapsed": round(r.elapsed, 3),
                "processed": r.processed,
                "message": redact(r.message) if r.message else None,
            }
            for r in runs
        ],
        **extra,
    )


def _outcome(
    state: State,
    *,
    job_id: int | None,
    status: str,
    counts: dict[str, Any],
    exit_code: int,
    requests: int | None,
    elapsed: float,
    message: str | None,
    resume_job: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """The one JSON object `--json` prints for harvest, resume, worker and nightly (README.md, Output)."""
    return {
        "job_id": job_id,
        "status": status,
        "counts": counts,
        "exit_code": exit_code,
        "requests": requests,
        "elapsed": round(elapsed, 3),
        "message": redact(message) if message else None,
        "resume_command": state.resume_command(resume_job) if resume_job is not None else None,
        **extra,
    }


def _echo_unrun(state: State, engine: Engine, job: jobs.Job, resume: bool) -> None:
    """The --json outcome of a command that ran nothing (a job only enqueued, or already finished)."""
    counts = jobs.item_counts(engine, job.id)
    outcome = _outcome(
        state,
        job_id=job.id,
        status=job.status,
        counts=counts,
        exit_code=ExitCode.OK,
        requests=0,
        elapsed=0.0,
        message=None,
        resume_job=job.id if resume else None,
    )
    click.echo(_json(outcome))


def _run_step(state: State, engine: Engine, job_id: int, progress: bool, config: Config, command: str) -> pipeline.RunOutcome:
    reporter = Reporter.for_stream(job_id, progress)
    try:
        return pipeline.run(engine, job_id, config, reporter, command=command)
    except KeyboardInterrupt:
        reporter.close()
        click.echo(f"Interrupted. Resume with: {state.resume_command(job_id)}", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    finally:
        reporter.close()


def _label(status: str) -> str:
    """How a stopped run's one line starts: a pause (quota, outage) is not an error."""
    return "Paused" if status == JobStatus.PAUSED else "Error"


def _print_outcome(state: State, outcome: pipeline.RunOutcome, resume: bool = True) -> None:
    c = outcome.counts
    state.info(
        f"job {outcome.job_id} {outcome.status}: {describe(c)} · pending {c[ItemStatus.PENDING]:,} "
        f"({outcome.processed:,} in {outcome.elapsed:.1f}s, {outcome.rate:,.0f} ids/s, {outcome.requests:,} requests)"
    )
    if outcome.message:
        click.echo(f"{_label(outcome.status)}: {redact(outcome.message)}", err=True)
    if outcome.status not in (JobStatus.FINISHED, JobStatus.RUNNING) and resume:
        click.echo(f"Resume with: {state.resume_command(outcome.job_id)}", err=True)
    elif c[ItemStatus.FAILED]:
        click.echo(
            f"{c[ItemStatus.FAILED]:,} items failed; see `harvester status {outcome.job_id}`, retry with `harvester retry-failed {outcome.job_id}`",
            err=True,
        )


@cli.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--endpoint",
    type=click.Choice(ID_ENDPOINTS),
    default=JobKind.COUNTS.value,
    show_default=True,
    help="Counts (scores and counts) or Fetch (also every mention, demographics, citation metadata).",
)
@click.option(
    "--id-type",
    type=click.Choice(INPUT_ID_TYPES),
    default="doi",
    show_default=True,
    help="What the ids are; auto: each id's type from its shape (a mixed list).",
)
@click.option(
    "--column",
    metavar="NAME",
    help="The sources are CSV/TSV exports: read the ids in this column (its header, any case), e.g. --column DOI.",
)
@click.option("--name", help="A name for the job (shown by `jobs`).")
@click.option("--concurrency", type=click.IntRange(1, 512), help="Requests in flight (default from [limits]).")
@click.option("--include-sources", metavar="LIST", help="Fetch: only these sources, comma-separated (e.g. news,policy).")
@click.option("--exclude-sources", metavar="LIST", help="Fetch: all sources but these, comma-separated.")
@click.option("--include-sections", metavar="LIST", help="Fetch: only these sections (counts,citation,altmetric_score,demographics,posts).")
@click.option("--post-types", type=click.Choice(["original_tweets"]), help="Fetch: leave retweets out.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@click.option("--enqueue-only", is_flag=True, help="Create the job, print its id on stdout and request nothing (for `harvester worker`).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="No job, no request: count the ids (rejected, duplicates, already stored, fresh, to request), and the time and days of quota the run takes.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="The outcome as one JSON object on stdout (job id, status, counts, exit code, resume command)."
)
@pass_state
@handle_errors
def harvest(
    state: State,
    sources: tuple[str, ...],
    endpoint: str,
    id_type: str,
    column: str | None,
    name: str | None,
    concurrency: int | None,
    include_sources: str | None,
    exclude_sources: str | None,
    include_sections: str | None,
    post_types: str | None,
    no_progress: bool,
    enqueue_only: bool,
    as_json: bool,
    dry_run: bool = False,
) -> None:
    """Create a job from id files ('-' for stdin) and run it.

    One id a line, or with --column NAME a CSV/TSV export (Zotero, Scopus,
    Web of Science, Dimensions ...); UTF-8 or UTF-16. DOIs in any common form
    (doi:, DOI 10..., info:doi/, urn:doi:, doi.org links, quoted or followed by
    punctuation) and ISBN-10s and ISBN-13s of one book collapse into one id.
    Invalid lines are recorded in job_rejects with their line in the file and
    skipped; duplicates are collapsed.

    \b
    Examples:
      ALTMETRIC_API_KEY=... harvester harvest dois.txt
      harvester harvest --column DOI zotero-export.csv
      harvester harvest --id-type auto mixed-ids.txt
      zcat pmids.txt.gz | harvester harvest --id-type pmid -
      harvester harvest --endpoint fetch --include-sources news,policy dois.txt
    """
    config = state.config(
        **{
            "limits.concurrency": concurrency,
            "fetch.include_sources": _split(include_sources),
            "fetch.exclude_sources": _split(exclude_sources),
            "fetch.include_sections": _split(include_sections),
            "fetch.post_types": post_types,
        }
    )
    params = endpoints.by_kind(endpoint).harvest_params(config.fetch, concurrency)
    if params.fetch is None and any((include_sources, exclude_sources, include_sections, post_types)):
        raise click.UsageError("--include-sources, --exclude-sources, --include-sections and --post-types need --endpoint fetch")
    engine = state.engine()
    if dry_run:
        plan = dryrun.plan_harvest(engine, config, list(sources), id_type, endpoint, concurrency=concurrency, column=column)
        _echo_plan(plan.as_dict() if as_json else plan.text())
        return
    job = jobs.create_job(engine, list(sources), id_type, endpoint, name, params=params, column=column)
    state.info(f"job {job.id}: {job.total_items:,} ids ({job.duplicate_lines:,} duplicates, {job.rejected_lines:,} rejected lines)")
    if job.rejected_lines:
        reasons = describe_rejects(jobs.reject_reasons(engine, job.id), job.rejected_lines)
        state.info(f"  rejected lines are in job_rejects (job_id = {job.id}): {reasons}")
    if enqueue_only:
        if as_json:
            _echo_unrun(state, engine, job, resume=True)
        else:
            click.echo(job.id)
        state.info(f"work it with: harvester worker {job.id}  (on any machine with this database), or {state.resume_command(job.id)}")
        return
    _run_and_report(state, engine, job.id, not no_progress, config, as_json=as_json)


@cli.command()
@click.argument("job_id", required=False, type=int, metavar="[JOB]")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@click.option(
    "--json", "as_json", is_flag=True, help="The outcome as one JSON object on stdout (job id, status, counts, exit code, resume command)."
)
@pass_state
@handle_errors
def resume(state: State, job_id: int | None, no_progress: bool, as_json: bool) -> None:
    """Resume a job (default: the newest unfinished one).

    Items already stored are not requested again. If other workers are on the
    job, this process joins them as one more worker.
    """
    engine = state.engine(must_exist=True)
    job = jobs.get_job(engine, job_id) if job_id is not None else jobs.newest_unfinished(engine)
    nightly_id = job.id if isinstance(job.params, NightlyParams) else job.params.nightly
    if nightly_id is not None and jobs.get_job(engine, nightly_id).status != JobStatus.FINISHED:
        nightly_job = jobs.get_job(engine, nightly_id)
        if job.endpoint == JobKind.NIGHTLY or not leases.runner_alive(engine, nightly_job):
            # A nightly whose process is gone is finished by `resume`, steps in order (and refused while another runs).
            _nightly(state, engine, not no_progress, as_json=as_json, resume_only=True)
        # Its process is alive: this one joins the step as one more worker.
    if all(j.status == JobStatus.FINISHED for j in jobs.chain(engine, job)):
        state.info(f"job {job.id} is already finished")
        if as_json:
            _echo_unrun(state, engine, job, resume=False)
        return
    # The job keeps the concurrency it was started with on the command line.
    config = state.config(**{"limits.concurrency": job.params.concurrency if isinstance(job.params, HarvestParams) else None})
    _run_and_report(state, engine, job.id, not no_progress, config, command="resume", as_json=as_json)


def _job_dict(engine: Engine, job: jobs.Job, details: bool) -> dict[str, Any]:
    counts = jobs.item_counts(engine, job.id)
    out: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "endpoint": job.endpoint,
        "id_type": job.id_type,
        "status": job.status,
        "items": counts,
        "total_items": job.total_items,
        "rejected_lines": job.rejected_lines,
        "duplicate_lines": job.duplicate_lines,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "last_error": job.last_error,
        "resume_after": job.resume_after,
        "params": job.params.as_dict(),
    }
    if details:
        out["workers"] = [
            {
                k: w[k]
                for k in ("runner", "host", "pid", "command", "started_at", "heartbeat_at", "items_done", "items_per_second", "leases")
            }
            for w in leases.live_workers(engine, job.id)
        ]
        rate, window = jobs.rate_window(engine, job.id)
        out["rate_per_second"] = round(rate, 1)
        out["rate_window_seconds"] = round(window, 1)
        out["eta_seconds"] = round(counts[ItemStatus.PENDING] / rate) if rate > 0 else None
        out["last_errors"] = jobs.last_errors(engine, job.id)
    return out


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def _echo_plan(plan: dict[str, Any] | list[str]) -> None:
    """A dry run's plan on stdout: one JSON object, or its lines."""
    if isinstance(plan, dict):
        click.echo(_json(plan))
    else:
        for line in plan:
            click.echo(line)


@cli.command()
@click.argument("job_id", required=False, type=int, metavar="[JOB]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
@handle_errors
def status(state: State, job_id: int | None, as_json: bool) -> None:
    """Show a job's per-state counts, rate, ETA and last errors (default: newest job)."""
    engine = state.engine(must_exist=True)
    if job_id is None:
        all_jobs = jobs.list_jobs(engine)
        if not all_jobs:
            raise HarvesterError("there are no jobs in this database yet")
        job_id = all_jobs[-1].id
    job = jobs.get_job(engine, job_id)
    info = _job_dict(engine, job, details=True)
    if as_json:
        # Errors are redacted when stored; this also covers rows written before that, or elsewhere.
        click.echo(redact(_json(info)))
        return
    c = info["items"]
    click.echo(f"job {info['id']}{' (' + info['name'] + ')' if info['name'] else ''}: {info['status']}, {_what(job)}")
    click.echo(f"  items: {info['total_items']:,} · pending {c[ItemStatus.PENDING]:,} · {describe(c)}")
    click.echo(f"  input: {info['duplicate_lines']:,} duplicate lines, {info['rejected_lines']:,} rejected lines")
    if info["status"] == JobStatus.RUNNING and info["rate_per_second"]:
        window = info["rate_window_seconds"]
        over = "over the last minute" if window >= 59.5 else f"over the {window:.0f}s since it (re)started"
        click.echo(f"  rate: {info['rate_per_second']:,} ids/s {over} · ETA {format_eta(info['eta_seconds'])}")
    if info["resume_after"]:
        click.echo(f"  paused until {info['resume_after']:%Y-%m-%d %H:%M} UTC")
    if info["last_error"]:
        click.echo(f"  stopped by: {redact(info['last_error'])}")
    for w in info["workers"]:
        click.echo(
            f"  worker {w['host']} pid {w['pid']} ({w['command']}): {w['items_done']:,} items, "
            f"{w['items_per_second']:,} items/s, {w['leases']:,} leased"
        )
    for e in info["last_errors"]:
        click.echo(f"  {e['status']} {e['identifier']}: {redact(e['last_error'])}")


def _what(job: jobs.Job) -> str:
    """What a job harvests, in a few words."""
    p = job.params
    if isinstance(p, CitationsParams):
        filters = filters_text(p.filters)
        return f"citations {p.timeframe}{' ' + filters if filters else ''}, one page an item" + (
            f", then job {p.then_job}" if p.then_job else ""
        )
    if isinstance(p, NightlyParams):
        return f"nightly of {p.night.isoformat()}: discovery job {p.discovery_job}, refresh job {p.refresh_job}"
    return f"{job.endpoint} of {job.id_type}" + (f", after job {p.after_job}" if p.after_job else "")


@cli.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
@handle_errors
def jobs_command(state: State, as_json: bool) -> None:
    """List the jobs in the database."""
    engine = state.engine(must_exist=True)
    infos = [_job_dict(engine, j, details=False) for j in jobs.list_jobs(engine)]
    if as_json:
        click.echo(redact(_json(infos)))
        return
    if not infos:
        state.info("no jobs yet")
    for i in infos:
        c = i["items"]
        click.echo(
            f"{i['id']:>5}  {i['status']:<11} {i['endpoint']:<9} {i['id_type']:<6} {i['total_items']:>10,} items  "
            f"pending {c[ItemStatus.PENDING]:,} · {describe(c)}  {i['name'] or ''}"
        )


@cli.command("retry-failed")
@click.argument("job_id", type=int, metavar="JOB")
@pass_state
@handle_errors
def retry_failed(state: State, job_id: int) -> None:
    """Put a job's failed items back to pending (then run `harvester resume JOB`)."""
    n = jobs.retry_failed(state.engine(must_exist=True), job_id)
    state.info(f"{n:,} failed items of job {job_id} are pending again; run: {state.resume_command(job_id)}")


@cli.command()
@click.argument("timeframe", type=click.Choice(TIMEFRAMES), metavar="TIMEFRAME")
@click.option("--cited-in", metavar="SOURCE", help="Only outputs mentioned in this source (e.g. news, policy).")
@click.option("--doi-prefix", metavar="PREFIX", help="Only DOIs with this prefix (e.g. 10.1038).")
@click.option("--issns", metavar="LIST", help="Only these journals' ISSNs, comma-separated.")
@click.option("--order-by", metavar="FIELD", help="The API's order_by (default: score).")
@click.option("--nlmid", metavar="LIST", help="Only these NLM journal ids, comma-separated.")
@click.option("--subjects", metavar="LIST", help="Only these subjects (the API's slugs), comma-separated.")
@click.option(
    "--num-results", type=click.IntRange(1, MAX_NUM_RESULTS), default=MAX_NUM_RESULTS, show_default=True, help="Results per page."
)
@click.option("--pages", type=click.IntRange(1, None), help="Pages to harvest (default: 1).")
@click.option("--all-pages", is_flag=True, help="Every page, until page * num_results >= query.total.")
@click.option("--then", type=click.Choice(ID_ENDPOINTS), help="Then harvest the listed outputs through this endpoint.")
@click.option("--name", help="A name for the job (shown by `jobs`).")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="No job, no request: the pages it would request (unknown until page 1 is read, unless --pages N), the time and days of quota.",
)
@pass_state
@handle_errors
def citations(
    state: State,
    /,
    timeframe: str,
    num_results: int,
    pages: int | None,
    all_pages: bool,
    then: str | None,
    name: str | None,
    no_progress: bool,
    dry_run: bool,
    **filters: str | None,
) -> None:
    """Harvest the outputs with attention in TIMEFRAME (at 1d 2d 3d 4d 5d 6d 1w 1m 3m 6m 1y).

    Each listed output is stored like a Counts result, and its rank and score
    in citation_activity. A page is an item of the job: `harvester resume`
    continues an interrupted listing.

    \b
    Examples:
      harvester citations 1w --doi-prefix 10.1038 --all-pages
      harvester citations 1d --cited-in policy --pages 5 --then fetch
    """
    if pages is not None and all_pages:
        raise click.UsageError("--pages and --all-pages exclude each other")
    engine = state.engine()
    if dry_run:
        plan = dryrun.plan_citations(
            engine, state.config(), timeframe, citation_filters(filters), num_results, None if all_pages else (pages or 1), then
        )
        _echo_plan(plan.text())
        return
    then_params = endpoints.by_kind(then).harvest_params(state.config().fetch) if then is not None else None
    with engine.begin() as conn:
        job_id, follow = jobs.create_citations_job(
            conn,
            timeframe,
            citation_filters(filters),
            num_results,
            None if all_pages else (pages or 1),
            then,
            name,
            then_params=then_params,
        )
    state.info(f"job {job_id}: citations {timeframe}" + (f", then {then} as job {follow}" if follow else ""))
    _run_and_report(state, engine, job_id, not no_progress)


@cli.command()
@click.option(
    "--json", "as_json", is_flag=True, help='The outcome as one JSON object on stdout, with every night\'s report under "reports".'
)
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="No job, no request: what tonight would refresh, by reason (your lists, discovered, old 404s), against max_items and the quota.",
)
@pass_state
@handle_errors
def nightly(state: State, as_json: bool, no_progress: bool, dry_run: bool = False) -> None:
    """Discover, refresh and snapshot, as configured in [nightly]; for cron or a systemd timer.

    Lists the outputs with attention through Citations, then refreshes the
    outputs of your own lists, then discovered ones, then old 404s (on the
    free tier within the day's quota), writes each
    one's row of the day in counts_snapshots, and prints a report (new,
    refreshed, not found, failed, top score movers), also kept in
    nightly_runs and nightly_movers. Exit codes: 0 done, 3 done with failed
    items, 75 another nightly is running or the quota is spent (the next run
    finishes this one first), 1 error, 130 interrupted.

    \b
    Example (crontab, 02:30 every night; the key in a file only you can read,
    and the venv's harvester by its path, as cron's PATH does not have it):
      30 2 * * * cd /srv/altmetric && ALTMETRIC_API_KEY="$(cat /srv/altmetric/key)" /srv/altmetric/venv/bin/harvester nightly --no-progress >> /srv/altmetric/nightly.log 2>&1
    """
    if dry_run:
        plan = dryrun.plan_nightly(state.engine(), state.config())
        _echo_plan(plan.as_dict() if as_json else plan.text())
        return
    _nightly(state, state.engine(), not no_progress, as_json)


def _nightly(state: State, engine: Engine, progress: bool, as_json: bool, resume_only: bool = False) -> None:
    reporter = lambda job_id: Reporter.for_stream(job_id, progress and state.progress(False))  # noqa: E731
    started = time.monotonic()
    from harvester import changefeed

    reports = nightly_module.run(engine, state.config(), reporter, resume_only, changes=changefeed.run_night)
    for report in reports:
        if not as_json and not state.quiet:
            _print_report(report)
        if report.stopped_step is not None:
            if report.message:
                click.echo(f"{_label(report.status)}: {redact(report.message)}", err=True)
            click.echo(
                f"nightly {report.night} {report.status}; the next nightly finishes it first. Resume with: {state.command('nightly')}",
                err=True,
            )
    last = reports[-1]
    # Finished: 3 if any night had failed items. Otherwise how the last one stopped.
    code = max(r.exit_code for r in reports) if last.status == JobStatus.FINISHED else last.exit_code
    if as_json:  # one object: the last night's outcome; every report (a leftover night's, then tonight's) under "reports"
        counts = {k: last.as_dict()[k] for k in ("discovered", "new_outputs", "refreshed", "not_found", "failed")}
        click.echo(
            _json(
                _outcome(
                    state,
                    job_id=last.job_id,
                    status=last.status,
                    counts=counts,
                    exit_code=code,
                    requests=None,
                    elapsed=time.monotonic() - started,
                    message=last.message,
                    resume_job=last.job_id if last.status not in (JobStatus.FINISHED, JobStatus.RUNNING) else None,
                    reports=[report.as_dict() for report in reports],
                )
            )
        )
    sys.exit(code)


def _print_report(report: nightly_module.Report) -> None:
    click.echo(f"nightly {report.night} (job {report.job_id}): {report.status}")
    if report.status != JobStatus.FINISHED:
        return
    failures = f"{report.not_found:,} not found · {report.failed:,} failed"
    if report.mode == "changes":
        # Its own words: "discovered" and "refreshed" are the refresh mode's steps, not this night's.
        state = "complete" if report.complete else f"INCOMPLETE ({report.mode_note}): nothing carried"
        click.echo(
            f"  changes: {report.timeframe} listing {state} · {report.requests or 0:,} requests · {report.listed or 0:,} listed "
            f"({report.listed_tracked or 0:,} tracked) · {report.carried or 0:,} carried · {report.full_refreshed or 0:,} fully refreshed"
        )
        click.echo(f"  {report.new_outputs:,} new · {failures}")
    else:
        click.echo(f"  {report.discovered:,} discovered · {report.new_outputs:,} new · {report.refreshed:,} refreshed · {failures}")
        if report.mode_note:
            click.echo(f"  mode: refresh ({report.mode_note})")
    if report.movers:
        click.echo("  top score movers since their previous snapshot:")
    for m in report.movers:
        click.echo(
            f"  {m['rank']:>3}. {m['change']:+10.2f}  {m['previous_score']:,.2f} -> {m['score']:,.2f}  "
            f"({m['previous_on']} -> {m['harvested_on']})  {m['doi'] or m['altmetric_id']}  {(m['title'] or '')[:60]}"
        )


@cli.command()
@click.argument("job_ids", nargs=-1, type=int, metavar="[JOB...]")
@click.option("--concurrency", type=click.IntRange(1, 512), help="Requests in flight (default from [limits]).")
@click.option("--wait", is_flag=True, help="Keep running and look for new jobs every few seconds (a service).")
@click.option("--json", "as_json", is_flag=True, help="What it did, as JSON on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@pass_state
@handle_errors
def worker(state: State, job_ids: tuple[int, ...], concurrency: int | None, wait: bool, as_json: bool, no_progress: bool) -> None:
    """Work jobs as one more worker process (default: every unfinished job, oldest first).

    Any number of workers, on any number of machines sharing one database
    (PostgreSQL), can work the same jobs: each item is leased to one worker
    ([workers] lease), and all of them together stay within the key's limits.
    Exits 0 when no item of those jobs is pending or leased (3 if some
    failed), 75 when what is left is paused (a spent quota).

    \b
    Examples:
      harvester --database postgresql+psycopg://harvester@db/altmetric worker --wait
      harvester worker 12 13 --concurrency 64
    """
    from harvester import worker as worker_module

    config = state.config(**{"limits.concurrency": concurrency})
    engine = state.engine(must_exist=True)
    progress = lambda job_id: Reporter.for_stream(job_id, state.progress(no_progress))  # noqa: E731
    outcome = pipeline.with_signals(lambda stop: worker_module.work(engine, config, list(job_ids) or None, stop, progress, wait))
    for run in outcome.runs:
        if run.processed or run.status != JobStatus.FINISHED:
            _print_outcome(state, run, resume=False)
    if outcome.message:
        click.echo(f"{'Paused' if outcome.exit_code == ExitCode.PAUSED else 'Error'}: {redact(outcome.message)}", err=True)
    if outcome.exit_code not in (ExitCode.OK, ExitCode.SOME_FAILED) and not as_json:
        # The same worker again (a resume would run the jobs in this process only, without --wait).
        click.echo(f"Resume with: {state.command('worker', *map(str, job_ids))}", err=True)
    if as_json:
        worked = [_job_dict(engine, jobs.get_job(engine, j), details=False) for j in outcome.jobs]
        click.echo(redact(_json(_runs_outcome(state, outcome.runs, outcome.exit_code, outcome.message, jobs=worked))))
    elif outcome.exit_code == ExitCode.OK and not outcome.jobs:
        state.info("no unfinished jobs")
    sys.exit(outcome.exit_code)


@cli.command()
@click.option(
    "--endpoint", type=click.Choice(ENDPOINTS), help="Only this endpoint's bodies (default: every body, in the order they were fetched)."
)
@click.option("--job", "job_id", type=int, metavar="N", help="Only the bodies job N fetched (still in the archive).")
@pass_state
@handle_errors
def reparse(state: State, endpoint: str | None, job_id: int | None) -> None:
    """Rebuild the data tables from the raw archive, with zero API requests.

    Every archived 200 body ([archive] in the config) is parsed again and
    stored as the harvest stored it, as of the time it was fetched: after a
    parser fix or a schema change, the database catches up without quota.
    Prints one summary line on stderr.

    \b
    Examples:
      harvester reparse
      harvester reparse --endpoint fetch --job 12
    """
    from harvester import reparse as reparse_module

    outcome = reparse_module.reparse(state.engine(must_exist=True), endpoint, job_id)
    if state.verbosity >= 0:
        click.echo(outcome.summary(), err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The findings as one JSON object on stdout.")
@pass_state
@handle_errors
def check(state: State, as_json: bool) -> None:
    """Check the configured key: valid? which endpoints? which limits? does the config match?

    Makes three requests (one each to Counts, Fetch and Citations, for a known
    output) and compares the rate limits the server announces with the
    configured tier and [limits], suggesting values to put in the config.
    Prints one line per finding. Exit 0 when every endpoint in [api] endpoints
    is allowed for the key, 1 otherwise (or when the API cannot be reached).

    \b
    Examples:
      ALTMETRIC_API_KEY=... harvester check
      harvester --config harvester.toml check --json
    """
    from harvester import check as check_module

    result = check_module.check(state.config())
    if as_json:
        click.echo(redact(_json(result.as_dict())))
    else:
        for finding in result.findings:
            line = redact(f"{finding.level}: {finding.message}")
            if finding.level == "error":
                click.echo(line, err=True)
            elif not state.quiet:
                click.echo(line)
    sys.exit(result.exit_code)


@cli.group("config")
def config_group() -> None:
    """The configuration: show the effective settings."""


@config_group.command("show")
@pass_state
@handle_errors
def config_show(state: State) -> None:
    """Show every effective setting and where it came from (default, file, environment, option).

    The API key is never shown, only whether it is set; a database
    password is shown as ***.

    \b
    Example:
      harvester --config nightly.toml config show
    """
    from harvester.config import explain_config

    state.config()  # validates, and registers the key so that no line below can show it
    settings = explain_config(state.config_path, overrides={"database.url": state.database})
    shown = []
    for dotted, value, source in settings:
        if dotted == "api.key":
            text = '"***"' if value else "(not set)"
        elif dotted == "database.url":
            text = json.dumps(hide_password(value))
        else:
            text = _toml_value(value)
        shown.append((dotted, redact(text), source))
    # Aligned comments, but a long URL must not push every other line's comment far right.
    width = min(max(len(d) + len(t) for d, t, _ in shown) + 3, 48)
    for dotted, text, source in shown:
        click.echo(f"{dotted} = {text}".ljust(width) + f"  # {source}")


def _toml_value(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def output_set_options(what: str) -> Callable[[F], F]:
    """--job and --list, for the commands that can cover a chosen set of outputs (report, export)."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--list", "lists", multiple=True, metavar="NAME", help="Only the outputs of the jobs harvested with --name NAME (repeatable)."
        )(fn)
        return click.option(
            "--job",
            "job_ids",
            type=click.IntRange(1, None),
            multiple=True,
            metavar="N",
            help=f"Only the outputs of job N ({what}; repeatable).",
        )(fn)

    return decorate


@cli.command("export")
@click.argument("table", required=False, metavar="[TABLE|VIEW]")
@click.option("--sql", metavar="QUERY", help="Export this read-only query instead (one SELECT; run in a transaction that is rolled back).")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), help="Output format (default: from -o's suffix, else csv)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE (default: stdout); CSV/JSONL get FILE.provenance.json beside it.",
)
@click.option(
    "--datasette-metadata",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write a metadata.json for Datasette (title, source, terms, tables) instead of exporting.",
)
@output_set_options("rows whose altmetric_id is one of them")
@pass_state
@handle_errors
def export_command(
    state: State,
    table: str | None,
    sql: str | None,
    fmt: str | None,
    output: Path | None,
    datasette_metadata: Path | None,
    job_ids: tuple[int, ...],
    lists: tuple[str, ...],
) -> None:
    """Export a table or view (default: output_summary) or a --sql query, with Altmetric's attribution.

    Rows are streamed, so memory stays flat however many there are. The
    attribution and provenance (source, endpoints, harvest dates, tool
    version, query, export time, terms) go into a Parquet file's metadata,
    into FILE.provenance.json beside a CSV or JSONL file, or to stderr when
    the data goes to stdout. Data from a free (researcher) key must not be
    redistributed. Parquet needs pyarrow: pip install 'altmetric-harvester[parquet]'.

    --job N and --list NAME keep the rows of those jobs' outputs (their done
    items, an output merged into another counted as the new one) in a table
    or view with an altmetric_id column; jobs, job_items and job_rejects keep
    the rows of those jobs; other tables, and --sql, are refused.

    \b
    Examples:
      harvester export > summary.csv
      harvester export --list our-papers -o our-papers.csv
      harvester export outputs --format parquet -o outputs.parquet
      harvester export --sql "select doi, score from outputs where score > 100" --format jsonl
      harvester export --datasette-metadata metadata.json && datasette serve harvest.db -m metadata.json -h 127.0.0.1
    """
    from harvester import export as export_module

    if (job_ids or lists) and sql is not None:
        raise click.UsageError("--job/--list choose the rows of a table or view, not of --sql: filter in your query instead")
    if (job_ids or lists) and datasette_metadata is not None:
        raise click.UsageError("--datasette-metadata describes the whole database: leave out --job/--list")
    engine = state.engine(must_exist=True)
    chosen = export_module.select_set(engine, job_ids, lists)
    if datasette_metadata is not None:
        path = sqlite_path(state.config().database.url)
        export_module.write_datasette_metadata(engine, datasette_metadata, path.stem if path else "harvest")
        if state.verbosity >= 0:
            click.echo(
                f"wrote {datasette_metadata}: serve it with datasette serve {path or 'DB'} --metadata {datasette_metadata} -h 127.0.0.1",
                err=True,
            )
        return
    if fmt is None:
        suffix = output.suffix.lower().lstrip(".") if output else ""
        fmt = {"parquet": "parquet", "pq": "parquet", "jsonl": "jsonl", "ndjson": "jsonl"}.get(suffix, "csv")
    query = export_module.resolve(engine, table, sql, chosen)
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise click.UsageError("Parquet is binary: give -o FILE or redirect stdout")
    try:
        result = export_module.export(engine, query, fmt, output)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(ExitCode.OK)
    if state.verbosity < 0:
        return
    if result.path is None:
        for line in export_module.attribution_lines(result.provenance):
            click.echo(line, err=True)
    elif result.sidecar is not None:
        click.echo(f"wrote {result.rows:,} rows to {result.path}; attribution and provenance in {result.sidecar}", err=True)
    else:
        click.echo(f"wrote {result.rows:,} rows to {result.path}; attribution and provenance in its Parquet metadata", err=True)


@cli.command("mock-api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8787, show_default=True, type=int, help="Port to listen on.")
@click.option("--key", "keys", multiple=True, help="A full-access key (repeatable; default: demo-key).")
@click.option("--counts-only-key", "counts_only_keys", multiple=True, help="A key limited to Counts (default: counts-only-key).")
@click.option("--per-second", type=float, help="Enforced requests/s per key (default: unlimited).")
@click.option("--burst", type=int, default=1, show_default=True, help="Bucket size for --per-second.")
@click.option("--per-hour", type=int, help="Enforced hourly window per key.")
@click.option("--per-day", type=int, help="Enforced daily quota per key.")
@click.option("--not-found-pct", type=float, default=15.0, show_default=True, help="Share of ids answered 404.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault injection.")
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="Share of requests answered 5xx.")
@click.option("--reset-rate", type=float, default=0.0, show_default=True, help="Share of connections reset.")
@click.option("--truncate-rate", type=float, default=0.0, show_default=True, help="Share of bodies cut short.")
@click.option("--html-rate", type=float, default=0.0, show_default=True, help="Share of 200s with an HTML page instead of JSON.")
@click.option("--slow-rate", type=float, default=0.0, show_default=True, help="Share of slow responses.")
@click.option("--slow-seconds", type=float, default=2.0, show_default=True, help="Delay of a slow response.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds added to every response.")
@click.option("--evolve", is_flag=True, help="Attention grows day by day (UTC), as nightly harvests see it.")
@click.option(
    "--universe",
    type=click.IntRange(1, 10_000_000),
    help="N outputs with attention on some days (a change-feed nightly's world): each day's Citations listings hold exactly those with attention.",
)
@click.option(
    "--attention-rate", type=click.FloatRange(0, 1, min_open=True), help="With --universe: the share with attention a day (default 0.01)."
)
@click.option(
    "--write-dois",
    nargs=2,
    type=(click.IntRange(1, 10_000_000), click.Path(dir_okay=False, writable=True)),
    metavar="COUNT FILE",
    help="With --universe: write the first COUNT of its DOIs to FILE (a list to track), then serve.",
)
@click.option("--pause-after", type=click.IntRange(0, None), help="After this many requests, pause: 429 with Retry-After to everyone.")
@click.option("--pause-seconds", type=float, default=5.0, show_default=True, help="How long the --pause-after pause lasts.")
@handle_errors
def mock_api(host: str, port: int, keys: tuple[str, ...], counts_only_keys: tuple[str, ...], **options: Any) -> None:
    """Run the bundled fake Altmetric API (for tests and trials, never production).

    \b
    Example:
      harvester mock-api --port 8787 --per-second 20 --error-rate 0.05
      HARVESTER_API_URL=http://127.0.0.1:8787/v1 ALTMETRIC_API_KEY=demo-key harvester harvest dois.txt
      harvester mock-api --universe 100000 --write-dois 2000 dois.txt   # to try mode = "changes"
    """
    from harvester.fakeapi import FakeConfig, run, universe_dois, universe_of

    write_dois = options.pop("write_dois")
    settings = {k: v for k, v in options.items() if v is not None}
    if settings.get("universe") is None and ("attention_rate" in settings or write_dois):
        raise click.UsageError("--attention-rate and --write-dois need --universe N")
    if keys:
        settings["keys"] = keys
    if counts_only_keys:
        settings["counts_only_keys"] = counts_only_keys
    cfg = FakeConfig(**settings)
    universe = universe_of(cfg)
    if universe is not None:
        # Its days are built in order from its epoch, once per process: here, rather than in the
        # first listing request, which would wait for all of them (~15 s for a million outputs).
        since = datetime.fromtimestamp(universe.epoch * 86400, UTC).date().isoformat()
        click.echo(f"building the attention of {universe.size:,} outputs, day by day since {since} ...", err=True)
        universe.attended_indices(int(cfg.clock() // 86400))
    if write_dois:
        count, path = write_dois
        dois = universe_dois(min(count, settings["universe"]), not_found_pct=settings["not_found_pct"])
        try:
            Path(path).write_text("".join(d + "\n" for d in dois), encoding="utf-8")
        except OSError as e:
            raise HarvesterError(f"cannot write {path}: {e.strerror or e}") from None
        click.echo(f"wrote {len(dois):,} DOIs of the universe to {path}", err=True)
    try:
        run(cfg, host, port, announce=lambda line: click.echo(line, err=True))
    except OSError as e:
        raise HarvesterError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@cli.command()
@click.option("--ids", "count", type=click.IntRange(1, 1_000_000), default=2000, show_default=True, help="How many DOIs to harvest.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@pass_state
@handle_errors
def demo(state: State, count: int, no_progress: bool) -> None:
    """Start the fake API on loopback, harvest sample DOIs into ./demo.db, summarize.

    \b
    Example:
      harvester demo && sqlite3 demo.db 'select doi, score from outputs order by score desc limit 5'
    """
    from harvester import demo as demo_module

    if state.database is None:
        state.database = "sqlite:///demo.db"
    outcome, summary = demo_module.run_demo(state.config(), count, Reporter.for_stream(0, state.progress(no_progress)))
    _print_outcome(state, outcome)
    if not state.quiet:
        click.echo(summary)
    sys.exit(outcome.exit_code)


@cli.command()
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    default="report.html",
    show_default=True,
    help="Where to write the HTML file.",
)
@output_set_options("and job health")
@pass_state
@handle_errors
def report(state: State, output: Path, job_ids: tuple[int, ...], lists: tuple[str, ...]) -> None:
    """Write one offline HTML report: headline numbers, charts, top outputs, nightlies, job health.

    --job N and --list NAME cover only those jobs' outputs (their done items,
    an output merged into another counted as the new one); the title says
    which set it covers.

    The file is self-contained (charts are inline SVG, no script, nothing
    fetched), so it opens anywhere. Needs the `report` extra (matplotlib).
    It carries Altmetric's attribution: data from a free key must not be
    published or redistributed.

    \b
    Examples:
      harvester report -o report.html && xdg-open report.html
      harvester report --list our-papers -o our-papers.html
    """
    from harvester import export as export_module
    from harvester import report as report_module

    report_module.require_matplotlib()
    engine = state.engine(must_exist=True)
    chosen = export_module.select_set(engine, job_ids, lists)
    data = report_module.write_report(engine, output, chosen=chosen)
    if not state.quiet:
        what = "nothing harvested yet" if data.empty else f"{data.chosen.title}: {data.headline['outputs']:,} outputs"
        click.echo(f"wrote {output} ({what})", err=True)


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value is not None else None


def main() -> None:
    cli(prog_name="harvester")
