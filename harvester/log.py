"""Logging setup (called by the CLI only) and the redaction of secrets.

The key is registered once; every log record and every error line shown to
the user passes through redact(), so no verbosity level can leak it.
"""

from __future__ import annotations

import logging
import re
import time

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_secrets: set[str] = set()
# What setup_logging was given, so that a child process (the writer) logs the same way.
_verbosity: int | None = None
# Any key=... query parameter, whatever its value, in case a URL slips through.
_KEY_PARAM = re.compile(r"(?i)([?&]key=)[^&\s'\")\]]+")
# The password of any URL with one (postgresql+psycopg://user:secret@host/db) in free text;
# userinfo holds no '/', so host:port/path@... is left alone.
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^@/\s'\"]+@")


def register_secret(value: str | None) -> None:
    """Remember a value that must never be shown."""
    if value:
        _secrets.add(value)


def redact(text: str) -> str:
    """Replace every registered secret, key= URL parameter and URL password with ***."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1***@", _KEY_PARAM.sub(r"\1***", text))


def hide_password(url: str) -> str:
    """A database URL fit to show: its password, if any, as ***; otherwise unchanged."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return redact(url)  # not parseable, so only the pattern can find a password
    # Left as typed when there is nothing to hide, so a printed command still runs as given.
    return parsed.render_as_string(hide_password=True) if parsed.password is not None else url


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(message), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class UtcFormatter(logging.Formatter):
    """`2026-11-30T21:52:45Z WARNING harvester.pipeline: ...`: a nightly's log spans days, so every line carries its UTC date."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def setup_logging(verbosity: int) -> None:
    """-q: errors only; default: warnings and run notes; -v: info; -vv: debug."""
    global _verbosity
    _verbosity = verbosity
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(UtcFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp and alembic are chatty at INFO; keep them to warnings unless -vv.
    for name in ("aiohttp", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


def child_settings() -> tuple[int, tuple[str, ...]]:
    """(verbosity, secrets) for a child process: a spawned process starts with neither, and
    its log lines would bypass the redaction, -q and the UTC format (writer.py)."""
    return (0 if _verbosity is None else _verbosity), tuple(_secrets)


def setup_child(settings: tuple[int, tuple[str, ...]]) -> None:
    """In a child process: register the parent's secrets, then log as the parent does."""
    verbosity, secrets = settings
    for secret in secrets:
        register_secret(secret)
    setup_logging(verbosity)
