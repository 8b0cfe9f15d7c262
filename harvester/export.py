"""Export a table, a view or a read-only query as CSV, JSON Lines or Parquet, with Altmetric's attribution.

Rows are streamed: PostgreSQL through a server-side cursor (`stream_results`),
SQLite by stepping its cursor a chunk at a time, so memory stays flat however
many rows there are. Every export carries its provenance (source, endpoints,
harvest dates, tool version, query, export time, terms): in the Parquet file's
key-value metadata, in a `FILE.provenance.json` sidecar beside a CSV or JSONL
file, or as lines on stderr when the data goes to stdout.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from sqlalchemy import Boolean, Date, DateTime, Engine, Float, Integer, LargeBinary, Numeric, String, inspect, select
from sqlalchemy.types import TypeEngine

from harvester import __version__, clock, db, schema
from harvester.errors import HarvesterError
from harvester.params import ApiUsed
from harvester.vocabulary import ENDPOINTS

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet")
DEFAULT_SOURCE = "output_summary"
FETCH_ROWS = 10_000  # rows fetched from the database at a time
ROW_GROUP_ROWS = 50_000  # rows in a Parquet row group
DISTRIBUTION = "altmetric-harvester"
PARQUET_HINT = f"pip install '{DISTRIBUTION}[parquet]'"

SOURCE_NAME = "Altmetric.com"
SOURCE_URL = "https://www.altmetric.com"
API_URL = "https://api.altmetric.com/v1"  # Altmetric's own API: data from any other address is not Altmetric's
API_DOCS_URL = "https://api.altmetric.com"
TERMS = (
    "Data from Altmetric.com, harvested through the Altmetric Details Page API. Cite Altmetric.com as the "
    "source wherever you use it. Data obtained with a free (researcher) API key may be used for your own "
    "research but must not be redistributed or published (no public datasets, no public Datasette); "
    "commercial keys follow their contract."
)
ATTRIBUTION = "Source: Altmetric.com (https://www.altmetric.com)"

# The main tables and views, as Datasette and the provenance describe them (docs/schema.md has every column).
DESCRIPTIONS = {
    "output_summary": "One row per current research output: DOI, title, journal, Altmetric score, and posts and accounts per main source as columns.",
    "score_changes": "The daily time series of each output's score (counts_snapshots) with its change since the previous snapshot, a day and a week before.",
    "outputs": "One row per research output (altmetric_id): DOI, title, journal, type, dates, Altmetric Attention Score, totals.",
    "identifiers": "Every identifier of an output (DOIs lower-cased) mapped to its altmetric_id: join your own lists here.",
    "source_counts": "Posts and unique accounts per output and source (twitter, news, blogs, policy, wikipedia ...).",
    "readers": "Reader counts per output and reference manager (mendeley ...).",
    "score_history": "The Altmetric score's history per output and timeframe (1d ... at).",
    "score_context": "How each output ranks against all outputs, its journal and outputs of similar age.",
    "mentions": "One row per post (Fetch endpoint): news stories, blog posts, policy documents, tweets ...",
    "demographics": "Demographics of the accounts that mentioned an output (Fetch endpoint).",
    "citation_activity": "The outputs the Citations endpoint listed, per timeframe and day, with rank and score.",
    "counts_snapshots": "One row per output and day harvested: the daily time series of score, posts, accounts, readers.",
    "jobs": "Harvest jobs: endpoint, status, times, totals.",
    "job_items": "Each id of each job and its outcome (done, not_found, failed).",
}


@dataclass(frozen=True)
class Query:
    """What to export: a statement, a name for it, and the column types known from the schema."""

    sql: str
    name: str | None  # the table or view, None for --sql
    types: dict[str, TypeEngine[Any]] = field(default_factory=dict)
    chosen: OutputSet | None = None  # the --job/--list set it is restricted to; None: every row


@dataclass(frozen=True)
class ExportResult:
    rows: int
    path: Path | None  # None: stdout
    sidecar: Path | None  # the provenance file beside a CSV/JSONL file
    provenance: dict[str, Any]


class ExportError(HarvesterError):
    """The export cannot be made: unknown table, a query that is not read-only, a file that cannot be written."""


# --- a chosen set of outputs: --job N, --list NAME ------------------------------------------------

# Tables about jobs rather than outputs: a set keeps the rows of its jobs (job_items also those not found).
JOB_TABLES = {"jobs": "id", "job_items": "job_id", "job_rejects": "job_id"}


@dataclass(frozen=True)
class OutputSet:
    """The outputs a report or an export covers: all of them, or those of some jobs and lists.

    A list is the jobs harvested with `--name NAME`; the outputs of a job are the altmetric ids
    of its `done` items, each followed through `output_aliases` (an output merged into another
    counts as the new one; chains are kept one hop long).
    """

    jobs: tuple[int, ...] = ()  # every job of the set: those given and those of the lists
    given_jobs: tuple[int, ...] = ()
    lists: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.given_jobs and not self.lists

    @property
    def title(self) -> str:
        """Which set this is, as the report's title says it: "All outputs", "List 'x'", "Jobs 3, 5"."""
        parts = []
        if self.lists:
            parts.append(("List " if len(self.lists) == 1 else "Lists ") + ", ".join(f"'{n}'" for n in self.lists))
        if self.given_jobs:
            parts.append(("Job " if len(self.given_jobs) == 1 else "Jobs ") + ", ".join(str(j) for j in self.given_jobs))
        return " + ".join(parts) or "All outputs"

    def ids_sql(self) -> str:
        """SQL for the set's current altmetric ids (job ids are integers checked by select_set, never user text)."""
        in_jobs = ", ".join(str(int(j)) for j in self.jobs) or "NULL"
        return (
            "SELECT COALESCE(a.new_altmetric_id, i.altmetric_id) FROM job_items i "
            "LEFT JOIN output_aliases a ON a.old_altmetric_id = i.altmetric_id "
            f"WHERE i.job_id IN ({in_jobs}) AND i.status = 'done' AND i.altmetric_id IS NOT NULL"
        )

    def members_sql(self) -> str:
        """The set's ids and the old ids merged into them: rows a table still keeps under an old id (snapshots) belong too."""
        ids = self.ids_sql()
        return f"{ids} UNION SELECT old_altmetric_id FROM output_aliases WHERE new_altmetric_id IN ({ids})"

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "lists": list(self.lists), "jobs": list(self.given_jobs), "all_jobs": list(self.jobs)}


ALL = OutputSet()


def select_set(engine: Engine, job_ids: Sequence[int] = (), lists: Sequence[str] = ()) -> OutputSet:
    """The set of `--job N` and `--list NAME` (none: all outputs); an unknown job or list is an error."""
    if not job_ids and not lists:
        return ALL
    given = tuple(sorted({int(j) for j in job_ids}))
    names = tuple(dict.fromkeys(lists))
    chosen: dict[int, None] = {}
    with engine.connect() as conn:
        known = {r[0] for r in conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.id.in_(given)))} if given else set()
        missing = [j for j in given if j not in known]
        if missing:
            raise ExportError(f"no job {', '.join(map(str, missing))} in this database (harvester jobs lists them)")
        chosen.update(dict.fromkeys(given))
        for name in names:
            found = [r[0] for r in conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.name == name).order_by(schema.jobs.c.id))]
            if not found:
                named = [
                    r[0]
                    for r in conn.execute(
                        select(schema.jobs.c.name).where(schema.jobs.c.name.is_not(None)).distinct().order_by(schema.jobs.c.name).limit(9)
                    )
                ]
                hint = (
                    f"; lists: {', '.join(repr(n) for n in named[:8])}{' ...' if len(named) > 8 else ''}"
                    if named
                    else "; no job has a name yet"
                )
                raise ExportError(f"no list named {name!r}: no job was harvested with --name {name!r}{hint}")
            chosen.update(dict.fromkeys(found))
    return OutputSet(tuple(sorted(chosen)), given, names)


@dataclass(frozen=True)
class Origin:
    """Where the data of a set came from: the APIs its jobs used, and when its outputs were harvested."""

    apis: tuple[ApiUsed, ...]  # every (URL, tier) recorded, in the order first used
    unknown_jobs: int  # jobs that ran before the URL was recorded
    endpoints: tuple[str, ...]
    first: str | None
    last: str | None

    @property
    def urls(self) -> list[str]:
        return list(dict.fromkeys(a.url for a in self.apis)) + (["unknown"] if self.unknown_jobs else [])

    @property
    def tiers(self) -> list[str]:
        return list(dict.fromkeys(a.tier for a in self.apis if a.tier))

    @property
    def not_altmetric(self) -> list[str]:
        """The recorded URLs that are not Altmetric's API (the bundled fake, a test server)."""
        return [u for u in dict.fromkeys(a.url for a in self.apis) if urlsplit(u).hostname != urlsplit(API_URL).hostname]


def origin(engine: Engine, chosen: OutputSet = ALL) -> Origin:
    """The APIs (jobs.params "api", jobs.record_api) and harvest dates of the set's data.

    All outputs: every job that ran. A set: the jobs that made one of its outputs `done`
    (its own, and the nightlies' refreshes of them), and the harvest times of its outputs.
    """
    names = set(relations(engine))
    if not {"jobs", "outputs"} <= names:
        return Origin((), 0, (), None, None)
    endpoints = ", ".join(f"'{e}'" for e in ENDPOINTS)  # the jobs that send requests (a nightly's steps are jobs of these)
    where = f"started_at IS NOT NULL AND endpoint IN ({endpoints})"
    restrict = ""
    if not chosen.everything:
        where += f" AND id IN (SELECT i.job_id FROM job_items i WHERE i.status = 'done' AND i.altmetric_id IN ({chosen.members_sql()}))"
        restrict = f" WHERE altmetric_id IN ({chosen.ids_sql()})"
    apis: dict[ApiUsed, None] = {}
    unknown = 0
    used: set[str] = set()
    with engine.connect() as conn:
        for endpoint, params in conn.exec_driver_sql(f"SELECT endpoint, params FROM jobs WHERE {where} ORDER BY id"):
            used.add(endpoint)
            try:
                recorded = ApiUsed.read(json.loads(params or "{}").get("api"))
            except (ValueError, AttributeError):
                recorded = ()
            apis.update(dict.fromkeys(recorded))
            unknown += not recorded
        row = conn.exec_driver_sql(
            f"SELECT MIN(COALESCE(first_harvested_at, harvested_at)), MAX(harvested_at) FROM outputs{restrict}"
        ).one()
        first, last = (_iso(v) for v in row)
        if first is None and chosen.everything:
            row = conn.exec_driver_sql("SELECT MIN(started_at), MAX(COALESCE(finished_at, started_at)) FROM jobs").one()
            first, last = (_iso(v) for v in row)
    return Origin(tuple(apis), unknown, tuple(sorted(used)), first, last)


def relations(engine: Engine) -> list[str]:
    """The database's tables and views, sorted."""
    insp = inspect(engine)
    return sorted((set(insp.get_table_names()) | set(insp.get_view_names())) - {"alembic_version"})


_READ_ONLY = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(select|with|values|table|explain)\b", re.I | re.S)


def resolve(engine: Engine, table: str | None = None, sql: str | None = None, chosen: OutputSet = ALL) -> Query:
    """Check the table or view name, or that the query reads, and return what to run.

    With a chosen set (--job, --list), a table or view with an altmetric_id column keeps the rows
    of the set's outputs (and of old ids merged into them); jobs, job_items and job_rejects keep
    the rows of the set's jobs; any other table is refused. A --sql query is refused with a set.
    """
    if sql is not None:
        if table is not None:
            raise ExportError("give a TABLE|VIEW or --sql, not both")
        if not chosen.everything:
            raise ExportError("--job/--list choose the rows of a table or view, not of --sql: filter in the query (docs/querying.md)")
        statement = sql.strip().rstrip(";").strip()
        if not _READ_ONLY.match(statement):
            raise ExportError("--sql takes one read-only query (SELECT, WITH ... SELECT or VALUES)")
        if ";" in _strip_literals(statement):
            raise ExportError("--sql takes one statement, without ';' between statements")
        return Query(statement, None)
    name = table or DEFAULT_SOURCE
    names = relations(engine)
    if name not in names:
        preferred = [n for n in ("output_summary", "score_changes", "outputs", "source_counts", "mentions") if n in names]
        shown = preferred + [n for n in names if n not in preferred]
        raise ExportError(f"no table or view named {name!r}; try one of: {', '.join(shown[:8])}{' ...' if len(shown) > 8 else ''}")
    types = {c["name"]: c["type"] for c in inspect(engine).get_columns(name)}
    quoted = engine.dialect.identifier_preparer.quote(name)
    statement = f"SELECT * FROM {quoted}"
    if not chosen.everything:
        if name in JOB_TABLES:
            in_jobs = ", ".join(str(int(j)) for j in chosen.jobs) or "NULL"
            statement += f" WHERE {JOB_TABLES[name]} IN ({in_jobs})"
        elif "altmetric_id" in types:
            statement += f" WHERE altmetric_id IN ({chosen.members_sql()})"
        else:
            raise ExportError(
                f"{name!r} has no altmetric_id column, so --job/--list cannot choose its rows: export it without them, or use --sql"
            )
    return Query(statement, name, types, chosen)


def _strip_literals(sql: str) -> str:
    """The query without its string literals and quoted names, where a ';' is harmless."""
    return re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", sql)


@contextmanager
def stream(engine: Engine, query: Query, chunk: int = FETCH_ROWS) -> Iterator[tuple[list[str], Iterator[list[tuple[Any, ...]]]]]:
    """(column names, chunks of rows), read in a transaction that is read-only and rolled back."""
    with engine.connect() as plain, db.read_only(plain) as conn:
        options = conn.execution_options(stream_results=True, yield_per=chunk, no_parameters=True)
        result = options.exec_driver_sql(query.sql)
        columns = list(result.keys())
        convert = _sqlite_dates(columns, query.types) if db.dates_as_text(conn.dialect) else None

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            for part in result.partitions(chunk):
                rows = [tuple(r) for r in part]
                yield convert(rows) if convert else rows

        yield columns, chunks()


def _sqlite_dates(columns: list[str], types: dict[str, TypeEngine[Any]]) -> Callable[[list[tuple[Any, ...]]], list[tuple[Any, ...]]] | None:
    """SQLite returns its timestamps as text: parse the columns the schema types as dates, as PostgreSQL gives them."""
    at = [(i, isinstance(types[c], DateTime)) for i, c in enumerate(columns) if isinstance(types.get(c), (DateTime, Date))]
    if not at:
        return None

    def convert(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        out = []
        for row in rows:
            values = list(row)
            for i, is_datetime in at:
                v = values[i]
                if isinstance(v, str):
                    try:
                        values[i] = datetime.fromisoformat(v) if is_datetime else date.fromisoformat(v[:10])
                    except ValueError:
                        pass  # not a date after all: exported as stored
            out.append(tuple(values))
        return out

    return convert


def provenance(engine: Engine, query: Query, fmt: str) -> dict[str, Any]:
    """Where the data comes from and on what terms: for the file's metadata, a sidecar, or stderr."""
    facts = origin(engine, query.chosen or ALL)
    return {
        "source": SOURCE_NAME,
        "source_url": SOURCE_URL,
        # The API base URLs the data came from (recorded by each job's runs), "unknown" for jobs run before that.
        "api": ", ".join(facts.urls) or "unknown",
        "api_urls": facts.urls,
        "tiers": facts.tiers,
        "not_altmetric_api": facts.not_altmetric,
        "endpoints": list(facts.endpoints),
        "harvested_from": facts.first,
        "harvested_to": facts.last,
        "outputs": query.chosen.as_dict() if query.chosen else OutputSet().as_dict(),
        "tool": f"{DISTRIBUTION} {__version__}",
        "table": query.name,
        "query": query.sql,
        "format": fmt,
        "exported_at": clock.utcnow().isoformat(timespec="seconds") + "Z",
        "attribution": ATTRIBUTION,
        "terms": TERMS,
    }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    return str(value.isoformat(timespec="seconds") if isinstance(value, datetime) else value.isoformat())


def attribution_lines(info: dict[str, Any]) -> list[str]:
    """The attribution as a few lines for stderr."""
    span = f"{(info['harvested_from'] or '?')[:10]} to {(info['harvested_to'] or '?')[:10]}"
    lines = [
        f"{ATTRIBUTION}; Details Page API endpoints {', '.join(info['endpoints']) or 'none'}, harvested {span} from {info['api']} with {info['tool']}.",
        "Terms: cite Altmetric.com; data from a free (researcher) key must not be redistributed or published.",
    ]
    if info["not_altmetric_api"]:
        lines.append(f"Note: not from Altmetric's API ({', '.join(info['not_altmetric_api'])}): test data, e.g. from the bundled fake API.")
    return lines


# --- writing -----------------------------------------------------------------------------------

_PLAIN = (int, float, str, type(None))


def _plain(value: Any) -> Any:
    """A value as CSV and JSON want it: ISO dates, numbers for decimals, text for the rest."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent == 0 else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def _cells(row: Sequence[Any]) -> list[Any]:
    return [v if type(v) in _PLAIN else _plain(v) for v in row]


def _write_csv(out: IO[bytes], columns: list[str], chunks: Iterator[list[tuple[Any, ...]]]) -> int:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text)
    writer.writerow(columns)
    n = 0
    for rows in chunks:
        writer.writerows(_cells(r) for r in rows)
        n += len(rows)
    text.flush()
    text.detach()
    return n


def _write_jsonl(out: IO[bytes], columns: list[str], chunks: Iterator[list[tuple[Any, ...]]]) -> int:
    encode = json.JSONEncoder(ensure_ascii=False, default=_plain, allow_nan=False).encode
    n = 0
    for rows in chunks:
        lines = [encode(dict(zip(columns, _cells(r)))) for r in rows]
        out.write(("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
        n += len(rows)
    return n


def require_pyarrow() -> None:
    try:
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise ExportError(f"Parquet needs pyarrow: {PARQUET_HINT}") from None


def _write_parquet(
    out: IO[bytes], columns: list[str], chunks: Iterator[list[tuple[Any, ...]]], types: dict[str, TypeEngine[Any]], info: dict[str, Any]
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: Any = None
    schema: Any = None
    pending: list[Any] = []  # record batches, converted chunk by chunk: Arrow holds a row group in far less than tuples
    pending_rows = n = 0

    def flush() -> None:
        nonlocal pending_rows
        writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=ROW_GROUP_ROWS)
        pending.clear()
        pending_rows = 0

    try:
        for rows in chunks:
            if schema is None:  # the types from the schema, or from the first rows' values
                schema = _arrow_schema(pa, columns, types, rows, info)
                writer = pq.ParquetWriter(out, schema, compression="zstd")
            arrays = [_arrow_array(pa, columns[i], schema.field(i).type, [r[i] for r in rows]) for i in range(len(columns))]
            pending.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
            pending_rows += len(rows)
            n += len(rows)
            if pending_rows >= ROW_GROUP_ROWS:
                flush()
        if schema is None:  # no rows: the columns still get a type, the file its metadata
            schema = _arrow_schema(pa, columns, types, [], info)
            writer = pq.ParquetWriter(out, schema, compression="zstd")
        if pending:
            flush()
        writer.close()
    except BaseException:
        if writer is not None:  # else pyarrow's finalizer writes a footer into a closed file, with a traceback
            try:
                writer.close()
            except Exception:
                pass
        raise
    return n


def _arrow_schema(pa: Any, columns: list[str], types: dict[str, TypeEngine[Any]], rows: list[tuple[Any, ...]], info: dict[str, Any]) -> Any:
    """The file's schema, with the provenance in its key-value metadata."""
    arrow_types = [_arrow_type(pa, types.get(c), [r[i] for r in rows]) for i, c in enumerate(columns)]
    metadata = {"altmetric_harvester.provenance": json.dumps(info), "attribution": ATTRIBUTION, "terms": TERMS, "source": SOURCE_NAME}
    return pa.schema([pa.field(c, t) for c, t in zip(columns, arrow_types)], metadata=metadata)


def _arrow_type(pa: Any, sql_type: TypeEngine[Any] | None, sample: list[Any]) -> Any:
    """The column's Arrow type: from the schema when it is known, else from the first rows' values."""
    if isinstance(sql_type, Boolean):
        return pa.bool_()
    if isinstance(sql_type, Integer):
        return pa.int64()
    if isinstance(sql_type, (Float, Numeric)):
        return pa.float64()
    if isinstance(sql_type, DateTime):
        return pa.timestamp("us")
    if isinstance(sql_type, Date):
        return pa.date32()
    if isinstance(sql_type, LargeBinary):
        return pa.binary()
    if isinstance(sql_type, String):
        return pa.string()
    value = next((v for v in sample if v is not None), None)
    for kind, arrow in (
        (bool, pa.bool_()),
        (int, pa.int64()),
        ((float, Decimal), pa.float64()),
        (datetime, pa.timestamp("us")),
        (date, pa.date32()),
        ((bytes, memoryview), pa.binary()),
    ):
        if isinstance(value, kind):
            # An integer column of a view (SQLite types none) may hold REAL values further down.
            if kind is int and any(isinstance(v, float) for v in sample):
                return pa.float64()
            return arrow
    return pa.string()


def _arrow_array(pa: Any, column: str, arrow_type: Any, values: list[Any]) -> Any:
    convert: Callable[[Any], Any]
    if pa.types.is_string(arrow_type):
        convert = lambda v: v if isinstance(v, str) else _text(v)  # noqa: E731
    elif pa.types.is_integer(arrow_type):
        convert = lambda v: v if type(v) is int else _whole(column, v)  # noqa: E731
    elif pa.types.is_floating(arrow_type):
        convert = float
    elif pa.types.is_boolean(arrow_type):
        convert = bool
    elif pa.types.is_timestamp(arrow_type):
        convert = lambda v: v if isinstance(v, datetime) else datetime.fromisoformat(str(v))  # noqa: E731
    elif pa.types.is_date(arrow_type):
        convert = lambda v: v if isinstance(v, date) else date.fromisoformat(str(v)[:10])  # noqa: E731
    else:
        convert = bytes
    try:
        return pa.array([None if v is None else convert(v) for v in values], type=arrow_type)
    except (TypeError, ValueError, OverflowError, pa.ArrowException) as e:
        raise ExportError(f"column {column!r} does not fit Parquet type {arrow_type}: {e} (cast it in --sql)") from None


def _whole(column: str, value: Any) -> int:
    """An integer column's value; a fraction (SQLite types a view's expression by its first rows) is an error, not truncated."""
    if isinstance(value, (float, Decimal)) and value == int(value):
        return int(value)
    if isinstance(value, bool):
        return int(value)
    raise ExportError(f"column {column!r} holds integers and then {value!r}: CAST it to REAL (or TEXT) in --sql for Parquet")


def _text(value: Any) -> str:
    plain = _plain(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


@contextmanager
def _target(path: Path | None, stdout: IO[bytes]) -> Iterator[IO[bytes]]:
    """The file to write: stdout, or a temporary file beside `path` renamed over it on success.

    A failed export (disk full, Ctrl-C) leaves no half-written file behind and an older one intact.
    Devices and pipes (/dev/stdout, a FIFO) are written directly.
    """
    if path is None:
        yield stdout
        stdout.flush()
        return
    direct = path.exists() and not path.is_file()
    tmp = path if direct else path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        f = open(tmp, "wb")
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with f:
            yield f
        if not direct:
            os.replace(tmp, path)
    except BaseException:
        if not direct:
            tmp.unlink(missing_ok=True)
        raise


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (os.replace).

    A failed write (disk full, a file size limit) raises OSError and leaves an earlier `path`
    intact and no temporary file behind: a report or a provenance file is never half written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export(engine: Engine, query: Query, fmt: str, path: Path | None = None, stdout: IO[bytes] | None = None) -> ExportResult:
    """Write the query's rows to `path` (or `stdout`) in `fmt`, with the provenance; returns the row count."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        require_pyarrow()
    info = provenance(engine, query, fmt)
    out_stream = stdout if stdout is not None else _stdout_bytes()
    try:
        with stream(engine, query) as (columns, chunks), _target(path, out_stream) as out:
            if fmt == "csv":
                n = _write_csv(out, columns, chunks)
            elif fmt == "jsonl":
                n = _write_jsonl(out, columns, chunks)
            else:
                n = _write_parquet(out, columns, chunks, query.types, info)
    except BrokenPipeError:
        raise
    except OSError as e:
        where = path if path is not None else "stdout"
        raise ExportError(f"cannot write {where}: {e.strerror or e}") from None
    sidecar = None
    info = {**info, "rows": n, "columns": columns}
    if path is not None and fmt != "parquet":
        sidecar = sidecar_path(path)
        try:
            replace_file(sidecar, (json.dumps({**info, "file": path.name}, indent=2) + "\n").encode("utf-8"))
        except OSError as e:
            raise ExportError(f"cannot write the attribution file {sidecar}: {e.strerror or e}") from None
    return ExportResult(n, path, sidecar, info)


def sidecar_path(path: Path) -> Path:
    """The provenance file of a CSV or JSONL export: FILE.provenance.json beside it."""
    return path.with_name(path.name + ".provenance.json")


def _stdout_bytes() -> IO[bytes]:
    import sys

    return sys.stdout.buffer


# --- Datasette ---------------------------------------------------------------------------------


def datasette_metadata(engine: Engine, database_name: str) -> dict[str, Any]:
    """A metadata.json for `datasette serve DB.db --metadata metadata.json`: title, source, terms, tables."""
    names = set(relations(engine))
    facts = origin(engine)
    endpoints, first, last = facts.endpoints, facts.first, facts.last
    span = f" Harvested {first[:10]} to {last[:10]} from {', '.join(facts.urls)}" if first and last else ""
    tables = {
        name: {"description": text, "source": SOURCE_NAME, "source_url": SOURCE_URL} for name, text in DESCRIPTIONS.items() if name in names
    }
    return {
        "title": "Altmetric attention data",
        "description": (
            f"Altmetric Details Page API data ({', '.join(endpoints) or 'no endpoint yet'}) harvested with "
            f"{DISTRIBUTION} {__version__}.{span}. Data from a free (researcher) key must not be published: "
            "serve this on 127.0.0.1 for yourself, never on a public address."
        ),
        "source": SOURCE_NAME,
        "source_url": SOURCE_URL,
        "license": "Altmetric API terms: attribution required; free-tier data must not be redistributed",
        "license_url": API_DOCS_URL,
        "about": TERMS,
        "about_url": API_DOCS_URL,
        "databases": {database_name: {"source": SOURCE_NAME, "source_url": SOURCE_URL, "tables": tables}},
    }


def write_datasette_metadata(engine: Engine, path: Path, database_name: str) -> dict[str, Any]:
    metadata = datasette_metadata(engine, database_name)
    try:
        replace_file(path, (json.dumps(metadata, indent=2) + "\n").encode("utf-8"))
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    return metadata
