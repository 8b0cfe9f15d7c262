"""A throwaway PostgreSQL 15 server for the tests, from the machine's own binaries.

One cluster per test session (initdb takes a few seconds), one fresh database
per test (`pg_url`) or per module (`Cluster.database`). PostgreSQL refuses to run
as root, so as root (CI) the server runs as the `postgres` user. Without the binaries the
PostgreSQL tests are skipped with a loud reason (and a warning in pytest's summary),
except when `CI` or `HARVESTER_REQUIRE_PG` is set: then they fail, so that CI can
never skip them silently. tests/conftest.py exposes the fixtures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(os.environ.get("HARVESTER_PG_BIN", "/usr/lib/postgresql/15/bin"))
REQUIRE_VARS = ("CI", "HARVESTER_REQUIRE_PG")


def required(env: dict[str, str] | None = None) -> bool:
    """True when the PostgreSQL tests must run: `CI` or `HARVESTER_REQUIRE_PG` is set (and not 0/false)."""
    env = dict(os.environ) if env is None else env
    return any(env.get(name, "").strip().lower() not in ("", "0", "false", "no") for name in REQUIRE_VARS)


def missing(bin_dir: Path, env: dict[str, str] | None = None) -> None:
    """No PostgreSQL binaries: fail when they are required (CI), else skip, loudly."""
    reason = (
        f"PostgreSQL 15 server binaries not found in {bin_dir} (initdb, pg_ctl): install them "
        "(Debian: apt-get install postgresql) or point HARVESTER_PG_BIN at them"
    )
    if required(env):
        pytest.fail(f"{reason}; CI or HARVESTER_REQUIRE_PG is set, so the PostgreSQL tests must run", pytrace=False)
    warnings.warn(f"PostgreSQL tests SKIPPED: {reason}", pytest.PytestWarning, stacklevel=2)
    pytest.skip(f"PostgreSQL tests SKIPPED: {reason} (set CI or HARVESTER_REQUIRE_PG to make this a failure)")


class Cluster:
    def __init__(self) -> None:
        if not (BIN / "initdb").exists():
            missing(BIN)
        self.as_root = os.geteuid() == 0
        # As root, in /tmp: the postgres user must reach the folder, and the socket path must stay short.
        self.root = Path(tempfile.mkdtemp(prefix="harvester-pg-", dir="/tmp" if self.as_root else None))
        self.data = self.root / "data"
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        try:
            self._run(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
            # -F: fsync off. --locale=C: text sorts bytewise, as in SQLite, so ordered rows compare equal.
            options = f"-F -p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        except BaseException:
            self.stop(check=False)
            raise

    def _run(self, *args: str, check: bool = True) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            log = self.root / "log"
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"{Path(args[0]).name} failed: {result.stdout}{result.stderr}{server_log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(sql)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database: its URL, dropped afterwards (connections left open or not)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f"CREATE DATABASE {name}")
        try:
            yield self.url(name)
        finally:
            self.admin(f"DROP DATABASE {name} WITH (FORCE)")

    def stop(self, check: bool = True) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=check)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's server, stopped at the end of the session whatever the tests did."""
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database on the session's server: postgresql+psycopg://postgres@127.0.0.1:PORT/NAME."""
    with pg_cluster.database() as url:
        yield url
