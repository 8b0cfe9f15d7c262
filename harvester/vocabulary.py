"""The harvester's words, typed: exit codes, job and item statuses, outcome kinds, job kinds, an item's result.

A leaf module (it imports nothing of the harvester's), so every stage, the writer process
and the tests speak of the same things by the same names. The string values are what users
see in SQL (`jobs.status`, `job_items.status`, `jobs.endpoint`) and in `--json`: they are
part of the schema's contract (docs/schema.md) and never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """The process's exit status (docs/architecture.md, exit codes). Only commands exit."""

    OK = 0  # finished: every item final, none failed
    ERROR = 1  # configuration, key, database; or a run that stopped early
    USAGE = 2
    SOME_FAILED = 3  # finished, some items failed
    PAUSED = 75  # resumable later: a spent quota, an outage, another process holds the nightly (EX_TEMPFAIL)
    INTERRUPTED = 130  # Ctrl-C or SIGTERM, after writing what was fetched


class JobStatus(StrEnum):
    """`jobs.status`: the values users see in SQL and `status`."""

    PENDING = "pending"  # created, never run
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"
    STOPPED = "stopped"


class ItemStatus(StrEnum):
    """`job_items.status`."""

    PENDING = "pending"
    DONE = "done"
    NOT_FOUND = "not_found"
    FAILED = "failed"


class OutcomeKind(StrEnum):
    """What one HTTP answer means for its item (docs/architecture.md, HTTP outcomes).

    The first three are final, and are the item's status; the others are not.
    """

    DONE = "done"
    NOT_FOUND = "not_found"
    FAILED = "failed"
    RETRY = "retry"  # counts as an attempt
    RATE_LIMITED = "rate_limited"  # waits; never an attempt
    AUTH = "auth"  # the key is refused: stops the job

    @property
    def final(self) -> bool:
        return self in (OutcomeKind.DONE, OutcomeKind.NOT_FOUND, OutcomeKind.FAILED)


class JobKind(StrEnum):
    """`jobs.endpoint`: what a job asks for. Every kind but the nightly is an endpoint (endpoints.REGISTRY)."""

    COUNTS = "counts"
    FETCH = "fetch"
    CITATIONS = "citations"
    NIGHTLY = "nightly"  # a nightly's own job row: its steps are jobs of the other kinds


# The kinds that are endpoints (each is a class in endpoints.py): the choices of `[api] endpoints`,
# `harvest --endpoint`, `reparse --endpoint` and the key check.
ENDPOINTS: tuple[str, ...] = tuple(k.value for k in JobKind if k is not JobKind.NIGHTLY)
# The endpoints that are asked about one id at a time (the others list outputs): the choices of
# `harvest --endpoint`, `citations --then` and `[nightly] endpoint`. Endpoint.by_id says the same
# of each class (a test holds the two together).
ID_ENDPOINTS: tuple[str, ...] = (JobKind.COUNTS.value, JobKind.FETCH.value)


@dataclass(slots=True)
class ItemResult:
    """The final outcome of one job item: what the run hands the writer, and the writer commits.

    A done item carries the raw body (already checked to be a JSON object with an
    altmetric_id): the writer parses it, off the event loop's core. It crosses to the writer
    process as a plain tuple (`as_tuple`, `from_tuple`): a tenth of the dataclass's pickling cost.
    """

    id_type: str
    identifier: str
    status: ItemStatus  # done, not_found, failed
    attempts: int
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    note: str | None = None

    def as_tuple(self) -> tuple[str, str, str, int, int | None, str | None, bytes | None, str | None]:
        return (self.id_type, self.identifier, str(self.status), self.attempts, self.http_status, self.error, self.body, self.note)

    @classmethod
    def from_tuple(cls, fields: tuple[str, str, str, int, int | None, str | None, bytes | None, str | None]) -> ItemResult:
        id_type, identifier, status, attempts, http_status, error, body, note = fields
        return cls(id_type, identifier, ItemStatus(status), attempts, http_status, error, body, note)
