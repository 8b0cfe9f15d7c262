"""Typed errors: every expected failure is a HarvesterError with one clear line."""

from __future__ import annotations

from datetime import datetime

from harvester.vocabulary import ExitCode, JobKind


def db_message(error: BaseException) -> str:
    """The first line of the database driver's message, without SQLAlchemy's statement and link."""
    orig = getattr(error, "orig", None) or error
    lines = str(orig).strip().splitlines() or [type(orig).__name__]
    return lines[0][:300]


class HarvesterError(Exception):
    """Base of every expected failure; str() is the one line shown to the user."""

    exit_code: ExitCode = ExitCode.ERROR
    label = "Error"  # how the CLI's one line starts: a pause is not an error


class ConfigError(HarvesterError):
    """The configuration (file, environment or options) is invalid."""


class InputError(HarvesterError):
    """An id source cannot be read (missing file, not text)."""


class DatabaseError(HarvesterError):
    """The database cannot be opened, migrated or written."""


class JobError(HarvesterError):
    """A job cannot be found or is in no state for the command."""


class JobBusyError(HarvesterError):
    """Another live process is running the job."""

    exit_code = ExitCode.PAUSED


class ApiAuthError(HarvesterError):
    """The API refused the key (401/403): fatal for the whole job."""

    def __init__(self, status: int, endpoint: str, text: str) -> None:
        self.status = status
        self.endpoint = endpoint
        self.text = text
        hint = ""
        if status == 401:
            hint = " (set ALTMETRIC_API_KEY or [api] key)"
        elif endpoint != JobKind.COUNTS:
            hint = (
                f"; if your key's tier lacks {endpoint}, harvest counts instead"
                ' and set endpoints = ["counts"] under [api] in the config so that nothing asks for it'
            )
        super().__init__(f"the API answered {status} on {endpoint}: {text.strip()[:300]}{hint}")


class ApiUnreachableError(HarvesterError):
    """The API host cannot be reached at all (DNS, refused connection)."""


# The quota kind of a day cut short by the configured [limits] per_day, not by the API.
OWN_DAILY = "per_day"


class QuotaExhausted(HarvesterError):
    """A quota (the API's daily one, Fetch's tweet ids, or the configured per_day) is spent: the job pauses until it resets."""

    exit_code = ExitCode.PAUSED
    label = "Paused"

    def __init__(self, resume_at: datetime, kind: str = "daily") -> None:
        self.resume_at = resume_at
        self.kind = kind
        resets = f"{resume_at:%Y-%m-%d %H:%M} UTC"
        if kind == OWN_DAILY:
            super().__init__(f"today's requests reached [limits] per_day; the count starts again at {resets}")
        else:
            super().__init__(f"the API's {kind} quota is spent; it resets at {resets}")


class ApiUnavailableError(HarvesterError):
    """The API kept failing (5xx, resets) through every probe: the job pauses."""

    exit_code = ExitCode.PAUSED
    label = "Paused"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the API has been failing for {seconds / 60:.0f} minutes; try again later")
