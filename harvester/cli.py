"""The `harvester` command: thin click commands over importable functions.

Known failures become one line on stderr and an exit code (DESIGN.md
section 3); tracebacks only with -v, and always with the key redacted.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import __version__, jobs, leases, pipeline
from harvester import nightly as nightly_module
from harvester.config import MAX_NUM_RESULTS, TIMEFRAMES, Config, citation_filters, filters_text, load_config
from harvester.db import current_revision, head_revision, open_database, sqlite_path
from harvester.errors import HarvesterError, db_message
from harvester.ids import ID_TYPES
from harvester.log import hide_password, redact, register_secret, setup_logging
from harvester.progress import Reporter, describe, format_eta

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

    def resume_command(self, job_id: int) -> str:
        parts = ["harvester"]
        if self.config_path:
            parts += ["--config", self.config_path]
        if self.database:
            # A password shown as *** makes the line need an edit, but it ends up in logs and terminals.
            parts += ["--database", hide_password(self.database)]
        return " ".join(shlex.quote(p) for p in [*parts, "resume", str(job_id)])


def handle_errors(func: F) -> F:
    """Turn expected errors into one line + exit code; hide tracebacks unless -v."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HarvesterError as e:
            _debug_traceback()
            click.echo(f"Error: {redact(str(e))}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except SQLAlchemyError as e:  # locked, full, gone, refused: the driver's line says which
            _debug_traceback()
            click.echo(f"Error: database error: {redact(db_message(e))}", err=True)
            sys.exit(1)
        except Exception as e:  # a bug: still one line, still no key
            _debug_traceback()
            click.echo(f"Error: internal error: {redact(f'{type(e).__name__}: {e}')} (run with -v for details)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _debug_traceback() -> None:
    state = click.get_current_context().find_object(State)
    if state is not None and state.verbosity > 0:
        click.echo(redact(traceback.format_exc()), err=True)


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def _run_and_report(state: State, engine: Engine, job_id: int, progress: bool, config: Config | None = None, command: str = "harvest") -> None:
    """Run a job, and the job it waits for or the follow-up it feeds (a citations job with --then)."""
    config = config or state.config()
    codes = []
    for job in jobs.chain(engine, jobs.get_job(engine, job_id)):
        if job.status == "finished":
            continue
        outcome = _run_step(state, engine, job.id, progress, config, command)
        _print_outcome(state, outcome)
        if outcome.status != "finished":
            sys.exit(outcome.exit_code)
        codes.append(outcome.exit_code)
    sys.exit(max(codes, default=0))


def _run_step(state: State, engine: Engine, job_id: int, progress: bool, config: Config, command: str) -> pipeline.RunOutcome:
    reporter = Reporter.for_stream(job_id, progress)
    try:
        return pipeline.run(engine, job_id, config, reporter, command=command)
    except KeyboardInterrupt:
        reporter.close()
        click.echo(f"Interrupted. Resume with: {state.resume_command(job_id)}", err=True)
        sys.exit(130)
    finally:
        reporter.close()


def _print_outcome(state: State, outcome: pipeline.RunOutcome, resume: bool = True) -> None:
    c = outcome.counts
    click.echo(
        f"job {outcome.job_id} {outcome.status}: {describe(c)} · pending {c['pending']:,} "
        f"({outcome.processed:,} in {outcome.elapsed:.1f}s, {outcome.rate:,.0f} ids/s, {outcome.requests:,} requests)",
        err=True,
    )
    if outcome.message:
        click.echo(f"Error: {redact(outcome.message)}", err=True)
    if outcome.status not in ("finished", "running") and resume:
        click.echo(f"Resume with: {state.resume_command(outcome.job_id)}", err=True)
    elif c["failed"]:
        click.echo(f"{c['failed']:,} items failed; see `harvester status {outcome.job_id}`, retry with `harvester retry-failed {outcome.job_id}`", err=True)


@cli.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--endpoint", type=click.Choice(["counts", "fetch"]), default="counts", show_default=True, help="Counts (scores and counts) or Fetch (also every mention, demographics, citation metadata).")
@click.option("--id-type", type=click.Choice(ID_TYPES), default="doi", show_default=True, help="What the ids are.")
@click.option("--name", help="A name for the job (shown by `jobs`).")
@click.option("--concurrency", type=click.IntRange(1, 512), help="Requests in flight (default from [limits]).")
@click.option("--include-sources", metavar="LIST", help="Fetch: only these sources, comma-separated (e.g. news,policy).")
@click.option("--exclude-sources", metavar="LIST", help="Fetch: all sources but these, comma-separated.")
@click.option("--include-sections", metavar="LIST", help="Fetch: only these sections (counts,citation,altmetric_score,demographics,posts).")
@click.option("--post-types", type=click.Choice(["original_tweets"]), help="Fetch: leave retweets out.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@click.option("--enqueue-only", is_flag=True, help="Create the job, print its id on stdout and request nothing (for `harvester worker`).")
@pass_state
@handle_errors
def harvest(
    state: State,
    sources: tuple[str, ...],
    endpoint: str,
    id_type: str,
    name: str | None,
    concurrency: int | None,
    include_sources: str | None,
    exclude_sources: str | None,
    include_sections: str | None,
    post_types: str | None,
    no_progress: bool,
    enqueue_only: bool,
) -> None:
    """Create a job from id files ('-' for stdin) and run it.

    One id a line; DOIs in any common form (doi:, DOI 10..., info:doi/,
    urn:doi:, doi.org links, quoted or followed by punctuation) and ISBN-10s
    and ISBN-13s of one book collapse into one id. Invalid lines are recorded
    in job_rejects and skipped; duplicates are collapsed.

    \b
    Examples:
      ALTMETRIC_API_KEY=... harvester harvest dois.txt
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
    params: dict[str, Any] = {"concurrency": concurrency}
    if endpoint == "fetch":
        params["fetch"] = config.fetch_options()
    elif any((include_sources, exclude_sources, include_sections, post_types)):
        raise click.UsageError("--include-sources, --exclude-sources, --include-sections and --post-types need --endpoint fetch")
    engine = state.engine()
    job = jobs.create_job(engine, list(sources), id_type, endpoint, name, params=params)
    click.echo(
        f"job {job.id}: {job.total_items:,} ids ({job.duplicate_lines:,} duplicates, {job.rejected_lines:,} rejected lines)",
        err=True,
    )
    if job.rejected_lines:
        click.echo(f"  rejected lines are in job_rejects (job_id = {job.id})", err=True)
    if enqueue_only:
        click.echo(job.id)
        click.echo(f"work it with: harvester worker {job.id}  (on any machine with this database), or {state.resume_command(job.id)}", err=True)
        return
    _run_and_report(state, engine, job.id, not no_progress, config)


@cli.command()
@click.argument("job_id", required=False, type=int, metavar="[JOB]")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@pass_state
@handle_errors
def resume(state: State, job_id: int | None, no_progress: bool) -> None:
    """Resume a job (default: the newest unfinished one).

    Items already stored are not requested again. If other workers are on the
    job, this process joins them as one more worker.
    """
    engine = state.engine(must_exist=True)
    job = jobs.get_job(engine, job_id) if job_id is not None else jobs.newest_unfinished(engine)
    nightly_id = job.id if job.endpoint == "nightly" else job.params.get("nightly")
    if nightly_id is not None and jobs.get_job(engine, nightly_id).status != "finished":
        nightly_job = jobs.get_job(engine, nightly_id)
        if job.endpoint == "nightly" or not jobs.runner_alive(engine, nightly_job):
            # A nightly whose process is gone is finished by `resume`, steps in order (and refused while another runs).
            _nightly(state, engine, not no_progress, as_json=False, resume_only=True)
        # Its process is alive: this one joins the step as one more worker.
    if all(j.status == "finished" for j in jobs.chain(engine, job)):
        click.echo(f"job {job.id} is already finished", err=True)
        return
    # The job keeps the concurrency it was started with on the command line.
    config = state.config(**{"limits.concurrency": job.params.get("concurrency")})
    _run_and_report(state, engine, job.id, not no_progress, config, command="resume")


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
        "params": job.params,
    }
    if details:
        out["workers"] = [
            {k: w[k] for k in ("runner", "host", "pid", "command", "started_at", "heartbeat_at", "items_done", "items_per_second", "leases")}
            for w in leases.live_workers(engine, job.id)
        ]
        rate = jobs.recent_rate(engine, job.id)
        out["rate_per_second"] = round(rate, 1)
        out["eta_seconds"] = round(counts["pending"] / rate) if rate > 0 else None
        out["last_errors"] = jobs.last_errors(engine, job.id)
    return out


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


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
    info = _job_dict(engine, jobs.get_job(engine, job_id), details=True)
    if as_json:
        # Errors are redacted when stored; this also covers rows written before that, or elsewhere.
        click.echo(redact(_json(info)))
        return
    c = info["items"]
    click.echo(f"job {info['id']}{' (' + info['name'] + ')' if info['name'] else ''}: {info['status']}, {_what(info)}")
    click.echo(f"  items: {info['total_items']:,} · pending {c['pending']:,} · {describe(c)}")
    click.echo(f"  input: {info['duplicate_lines']:,} duplicate lines, {info['rejected_lines']:,} rejected lines")
    if info["status"] == "running" and info["rate_per_second"]:
        click.echo(f"  rate: {info['rate_per_second']:,} ids/s over the last minute · ETA {format_eta(info['eta_seconds'])}")
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


def _what(info: dict[str, Any]) -> str:
    """What a job harvests, in a few words."""
    p = info["params"]
    if info["endpoint"] == "citations":
        filters = filters_text(p.get("filters"))
        return f"citations {p['timeframe']}{' ' + filters if filters else ''}, one page an item" + (
            f", then job {p['then_job']}" if p.get("then_job") else ""
        )
    if info["endpoint"] == "nightly":
        return f"nightly of {p['night']}: discovery job {p.get('discovery_job')}, refresh job {p.get('refresh_job')}"
    return f"{info['endpoint']} of {info['id_type']}" + (f", after job {p['after_job']}" if p.get("after_job") else "")


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
        click.echo("no jobs yet", err=True)
    for i in infos:
        c = i["items"]
        click.echo(
            f"{i['id']:>5}  {i['status']:<11} {i['endpoint']:<9} {i['id_type']:<6} {i['total_items']:>10,} items  "
            f"pending {c['pending']:,} · {describe(c)}  {i['name'] or ''}"
        )


@cli.command("retry-failed")
@click.argument("job_id", type=int, metavar="JOB")
@pass_state
@handle_errors
def retry_failed(state: State, job_id: int) -> None:
    """Put a job's failed items back to pending (then run `harvester resume JOB`)."""
    n = jobs.retry_failed(state.engine(must_exist=True), job_id)
    click.echo(f"{n:,} failed items of job {job_id} are pending again; run: {state.resume_command(job_id)}", err=True)


@cli.command()
@click.argument("timeframe", type=click.Choice(TIMEFRAMES), metavar="TIMEFRAME")
@click.option("--cited-in", metavar="SOURCE", help="Only outputs mentioned in this source (e.g. news, policy).")
@click.option("--doi-prefix", metavar="PREFIX", help="Only DOIs with this prefix (e.g. 10.1038).")
@click.option("--issns", metavar="LIST", help="Only these journals' ISSNs, comma-separated.")
@click.option("--order-by", metavar="FIELD", help="The API's order_by (default: score).")
@click.option("--nlmid", metavar="LIST", help="Only these NLM journal ids, comma-separated.")
@click.option("--subjects", metavar="LIST", help="Only these subjects (the API's slugs), comma-separated.")
@click.option("--num-results", type=click.IntRange(1, MAX_NUM_RESULTS), default=MAX_NUM_RESULTS, show_default=True, help="Results per page.")
@click.option("--pages", type=click.IntRange(1, None), help="Pages to harvest (default: 1).")
@click.option("--all-pages", is_flag=True, help="Every page, until page * num_results >= query.total.")
@click.option("--then", type=click.Choice(["counts", "fetch"]), help="Then harvest the listed outputs through this endpoint.")
@click.option("--name", help="A name for the job (shown by `jobs`).")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
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
    then_params = {"fetch": state.config().fetch_options()} if then == "fetch" else None
    with engine.begin() as conn:
        job_id, follow = jobs.create_citations_job(
            conn, timeframe, citation_filters(filters), num_results, None if all_pages else (pages or 1), then, name,
            then_params=then_params,
        )  # fmt: skip
    click.echo(f"job {job_id}: citations {timeframe}" + (f", then {then} as job {follow}" if follow else ""), err=True)
    _run_and_report(state, engine, job_id, not no_progress)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The reports as a JSON list on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@pass_state
@handle_errors
def nightly(state: State, as_json: bool, no_progress: bool) -> None:
    """Discover, refresh and snapshot, as configured in [nightly]; for cron or a systemd timer.

    Lists the outputs with attention through Citations, harvests them and
    every output whose last harvest is older than refresh_after, writes each
    one's row of the day in counts_snapshots, and prints a report (new,
    refreshed, not found, failed, top score movers), also kept in
    nightly_runs and nightly_movers. Exit codes: 0 done, 3 done with failed
    items, 75 another nightly is running or the quota is spent (the next run
    finishes this one first), 1 error, 130 interrupted.

    \b
    Example (crontab, 02:30 every night):
      30 2 * * * cd /srv/altmetric && harvester nightly >> nightly.log 2>&1
    """
    _nightly(state, state.engine(), not no_progress, as_json)


def _nightly(state: State, engine: Engine, progress: bool, as_json: bool, resume_only: bool = False) -> None:
    reporter = lambda job_id: Reporter.for_stream(job_id, progress)  # noqa: E731
    reports = nightly_module.run(engine, state.config(), reporter, resume_only)
    if as_json:  # a list: one report, or a leftover night's and then tonight's
        click.echo(_json([report.as_dict() for report in reports]))
    for report in reports:
        if not as_json:
            _print_report(report)
        if report.stopped_step is not None:
            if report.message:
                click.echo(f"Error: {redact(report.message)}", err=True)
            click.echo(f"nightly {report.night} {report.status}; the next `harvester nightly` finishes it first", err=True)
    last = reports[-1]
    # Finished: 3 if any night had failed items. Otherwise how the last one stopped.
    sys.exit(max(r.exit_code for r in reports) if last.status == "finished" else last.exit_code)


def _print_report(report: nightly_module.Report) -> None:
    click.echo(f"nightly {report.night} (job {report.job_id}): {report.status}")
    if report.status != "finished":
        return
    click.echo(
        f"  {report.discovered:,} discovered · {report.new_outputs:,} new · {report.refreshed:,} refreshed · "
        f"{report.not_found:,} not found · {report.failed:,} failed"
    )
    if report.movers:
        click.echo("  top score movers since their previous snapshot:")
    for m in report.movers:
        click.echo(
            f"  {m['rank']:>3}. {m['change']:+10.2f}  {m['previous_score']:g} -> {m['score']:g}  "
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
    progress = lambda job_id: Reporter.for_stream(job_id, not no_progress)  # noqa: E731
    outcome = pipeline.with_signals(
        lambda stop: worker_module.work(engine, config, list(job_ids) or None, stop, progress, wait)
    )
    for run in outcome.runs:
        if run.processed or run.status != "finished":
            _print_outcome(state, run, resume=False)
    if outcome.message:
        click.echo(f"Error: {redact(outcome.message)}", err=True)
    if as_json:
        click.echo(_json({"exit_code": outcome.exit_code, "jobs": [_job_dict(engine, jobs.get_job(engine, j), details=False) for j in outcome.jobs]}))
    elif outcome.exit_code == 0 and not outcome.jobs:
        click.echo("no unfinished jobs", err=True)
    sys.exit(outcome.exit_code)


@cli.command()
@click.option("--endpoint", type=click.Choice(["counts", "fetch", "citations"]), help="Only this endpoint's bodies (default: every body, in the order they were fetched).")
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
@click.option("--pause-after", type=click.IntRange(0, None), help="After this many requests, pause: 429 with Retry-After to everyone.")
@click.option("--pause-seconds", type=float, default=5.0, show_default=True, help="How long the --pause-after pause lasts.")
@handle_errors
def mock_api(host: str, port: int, keys: tuple[str, ...], counts_only_keys: tuple[str, ...], **options: Any) -> None:
    """Run the bundled fake Altmetric API (for tests and trials, never production).

    \b
    Example:
      harvester mock-api --port 8787 --per-second 20 --error-rate 0.05
      HARVESTER_API_URL=http://127.0.0.1:8787/v1 ALTMETRIC_API_KEY=demo-key harvester harvest dois.txt
    """
    from harvester.fakeapi import FakeConfig, run

    settings = {k: v for k, v in options.items() if v is not None}
    if keys:
        settings["keys"] = keys
    if counts_only_keys:
        settings["counts_only_keys"] = counts_only_keys
    try:
        run(FakeConfig(**settings), host, port, announce=lambda line: click.echo(line, err=True))
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
    outcome, summary = demo_module.run_demo(state.config(), count, Reporter.for_stream(0, not no_progress))
    _print_outcome(state, outcome)
    click.echo(summary)
    sys.exit(outcome.exit_code)


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value is not None else None


def main() -> None:
    cli(prog_name="harvester")
