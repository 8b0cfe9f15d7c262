"""PostgreSQL from zero: the commands of docs/scale-out.md, run as written on a throwaway server.

The test reads the fenced blocks after `<!-- from-zero: NAME -->` lines, so the docs and the
test cannot drift: a command it does not know how to run fails it. `sudo -u postgres X` runs
PostgreSQL 15's own `X` as the `postgres` user against the test's server (PGHOST/PGPORT), the
`/etc/postgresql/15/main` files are the server's own, `systemctl restart postgresql` is
`pg_ctl restart`, `~/.pgpass` is each machine's own file (PGPASSFILE), `db.example.org` is
127.0.0.1, and `harvester` is the real CLI in a subprocess against the bundled fake API.

The server is the test's own (tests/pg.py's Cluster, started the same way as the session's),
because its `pg_hba.conf` is rewritten as Debian's asks for passwords over TCP: the role the
docs create gets in with the password from `.pgpass` only, and runs the migrations as an
ordinary role, so a missing privilege fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harvester.fakeapi import FakeServer
from harvester.vocabulary import ExitCode
from tests.conftest import ROOT, dois
from tests.pg import BIN, Cluster
from tests.subproc import env_for

pytestmark = pytest.mark.slow

DOC = ROOT / "docs" / "scale-out.md"
_BLOCK = re.compile(r"^<!-- from-zero: (\S+) -->\n```(\w+)\n(.*?)^```", re.S | re.M)
PASSWORD = "from-zero-Pa55"
# Debian's pg_hba.conf, but `peer` for the postgres user is `trust` (the tests may not run as `postgres`).
DEBIAN_HBA = """\
local all postgres trust
host all postgres 127.0.0.1/32 trust
local all all peer
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, _language, body in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        assert name not in found, f"{DOC.name}: two blocks named {name!r}"
        found[name] = body
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    cluster = Cluster()  # fails when CI is set and the binaries are missing, else skips loudly
    try:
        (cluster.data / "pg_hba.conf").write_text(DEBIAN_HBA)
        cluster._run(str(BIN / "pg_ctl"), "-D", str(cluster.data), "-w", "reload")
        yield cluster
    finally:
        cluster.stop()


def as_superuser(cluster: Cluster, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres", autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


def postgres_setting(cluster: Cluster, name: str) -> str:
    """A setting as the server's config files give it (`postgres -C`, without the running server's command line)."""
    command = [str(BIN / "postgres"), "-D", str(cluster.data), "-C", name]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Machine:
    """One machine of the docs: its folder (the working directory), its .pgpass and its environment."""

    def __init__(self, folder: Path, cluster: Cluster, fake: FakeServer) -> None:
        folder.mkdir()
        self.folder = folder
        self.cluster = cluster
        self.pgpass = folder / ".pgpass"
        base = {k: v for k, v in env_for(fake).items() if not k.startswith("PG")}
        # The fake API, its key and the commercial tier come from the environment (README.md's variables).
        self.env = base | {"PGPASSFILE": str(self.pgpass), "PGPORT": str(cluster.port)}
        self.outputs: list[str] = []

    def write_pgpass(self, block: str, mode: int) -> None:
        lines = [self.here(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]
        assert lines and all(line.count(":") == 4 for line in lines), block
        self.pgpass.write_text("\n".join(lines) + "\n")
        self.pgpass.chmod(mode)

    def here(self, text: str) -> str:
        """The docs' names for this server: the default port is the test server's, db.example.org is 127.0.0.1."""
        return text.replace("db.example.org", "127.0.0.1").replace(":5432:", f":{self.cluster.port}:").replace("the-password", PASSWORD)

    def run(self, block: str) -> None:
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                self.command(line, argv)

    def command(self, line: str, argv: list[str]) -> None:
        cluster = self.cluster
        if argv == ["sudo", "apt", "install", "postgresql"]:
            assert (BIN / "postgres").exists()  # the server is the machine's own PostgreSQL 15
        elif argv[:3] == ["sudo", "-u", "postgres"] and (BIN / argv[3]).exists():
            # As the postgres user, over the server's socket; --pwprompt reads the password from
            # stdin, since the new session has no terminal to ask on.
            command = [str(BIN / argv[3]), *argv[4:]]
            if os.geteuid() == 0:
                command = ["runuser", "-u", "postgres", "--", *command]
            env = dict(os.environ) | {"PGHOST": str(cluster.root), "PGPORT": str(cluster.port), "PGUSER": "postgres"}
            stdin = f"{PASSWORD}\n{PASSWORD}\n" if "--pwprompt" in argv else ""
            done = subprocess.run(command, input=stdin, env=env, capture_output=True, text=True, timeout=60, start_new_session=True)
            assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        elif len(argv) == 7 and argv[0] == "echo" and argv[2:6] == ["|", "sudo", "tee", "-a"]:
            target = re.fullmatch(r"/etc/postgresql/\d+/main/(postgresql\.conf|pg_hba\.conf)", argv[6])
            assert target, f"{line}: not a file of Debian's cluster 'main'"
            with open(cluster.data / target[1], "a") as file:
                file.write(argv[1] + "\n")
        elif argv == ["sudo", "systemctl", "restart", "postgresql"]:
            # pg_ctl restart keeps the server's command line, so the test server still listens on 127.0.0.1 only.
            cluster._run(str(BIN / "pg_ctl"), "-D", str(cluster.data), "-l", str(cluster.root / "log"), "-w", "restart")
        elif argv[:2] == ["pip", "install"]:
            assert importlib.util.find_spec("psycopg") is not None  # the [postgres] extra's driver
        elif argv[0] == "chmod" and argv[2:] == ["~/.pgpass"]:
            self.pgpass.chmod(int(argv[1], 8))
        elif argv[0] == "export" and len(argv) == 2 and "=" in argv[1]:
            name, value = argv[1].split("=", 1)
            self.env[name] = self.here(value)
        elif argv[0] == "harvester":
            done = subprocess.run(
                [sys.executable, "-m", "harvester", *argv[1:]], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, f"{line}: exit {done.returncode}\n{done.stdout}{done.stderr}"
            self.outputs.append(done.stdout)
        else:
            pytest.fail(f"{DOC.name}: the test does not know how to run {line!r}; teach it (tests/test_postgres_from_zero.py)")


def test_postgresql_from_zero_as_documented(server: Cluster, fake: FakeServer, tmp_path: Path) -> None:
    docs = blocks()
    assert set(docs) == {"server", "pgpass", "client", "remote", "worker-pgpass", "worker"}

    # The server: a role and its database, by the documented commands.
    first = Machine(tmp_path / "db-host", server, fake)
    first.run(docs["server"])
    assert as_superuser(
        server, "SELECT rolsuper, rolcreatedb, rolcreaterole, rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'harvester'"
    ) == [(False, False, False, True)]
    assert as_superuser(server, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'altmetric'") == [("harvester",)]

    # The password is asked for: without a .pgpass the harvester cannot get in.
    first.env["HARVESTER_DATABASE_URL"] = "postgresql+psycopg://harvester@localhost/altmetric"
    refused = subprocess.run(
        [sys.executable, "-m", "harvester", "db", "current"], cwd=first.folder, env=first.env, capture_output=True, text=True
    )
    assert refused.returncode == ExitCode.ERROR and "password" in refused.stderr, refused.stderr
    del first.env["HARVESTER_DATABASE_URL"]

    # The client, on the same machine: .pgpass as written (readable by others until the docs' chmod), the URL, a harvest.
    first.write_pgpass(docs["pgpass"], 0o644)
    (first.folder / "dois.txt").write_text("\n".join(dois(40)) + "\n")
    first.run(docs["client"])
    assert first.env["HARVESTER_DATABASE_URL"] == "postgresql+psycopg://harvester@localhost/altmetric"
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=altmetric") as conn:
        assert conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall() == [("harvester",)]
        statuses: dict[str, int] = dict(conn.execute("SELECT status, count(*) FROM job_items GROUP BY status").fetchall())
        assert set(statuses) <= {"done", "not_found"} and sum(statuses.values()) == 40, statuses  # the fake 404s some
        (outputs,) = conn.execute("SELECT count(*) FROM outputs").fetchone() or (0,)
        assert outputs > 0

    # A second machine: the server listens and lets the role in from the subnet.
    first.run(docs["remote"])
    assert as_superuser(server, "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL") == []
    assert as_superuser(
        server, "SELECT database, user_name, address, netmask, auth_method FROM pg_hba_file_rules WHERE address = '192.0.2.0'"
    ) == [(["altmetric"], ["harvester"], "192.0.2.0", "255.255.255.0", "scram-sha-256")]
    # The server restarted with the file; from the file alone it would listen everywhere, but the
    # test server's command line (-c listen_addresses=127.0.0.1) wins, so it stays on loopback.
    assert postgres_setting(server, "listen_addresses") == "*"
    assert as_superuser(server, "SHOW listen_addresses") == [("127.0.0.1",)]

    # The worker on the second machine: its own .pgpass, the server's name in the URL.
    second = Machine(tmp_path / "worker-host", server, fake)
    second.write_pgpass(docs["worker-pgpass"], 0o600)
    (second.folder / "more-dois.txt").write_text("\n".join(dois(30, prefix="10.5555/w")) + "\n")
    second.run(docs["worker"])
    job_id = int(second.outputs[0].strip())
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=altmetric") as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM job_items WHERE job_id = %s GROUP BY status", (job_id,)).fetchall())
        assert set(statuses) <= {"done", "not_found"} and sum(statuses.values()) == 30, statuses
        assert conn.execute("SELECT id, status FROM jobs ORDER BY id").fetchall() == [(1, "finished"), (job_id, "finished")]


def test_the_readme_shows_the_documented_commands() -> None:
    """README.md's condensed paragraph quotes the commands of docs/scale-out.md that the test above runs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs = blocks()
    commands = [shlex.split(line, comments=True) for line in docs["server"].splitlines()]
    assert len(commands) == 3
    for argv in commands:
        assert f"`{shlex.join(argv)}`" in readme, argv
    url = next(
        argv[1].split("=", 1)[1]
        for argv in (shlex.split(line, comments=True) for line in docs["client"].splitlines())
        if argv[:1] == ["export"]
    )
    assert f"`--database {url}`" in readme
    assert docs["pgpass"].strip().replace("the-password", "PASSWORD") == "localhost:5432:altmetric:harvester:PASSWORD"
    assert "`localhost:5432:altmetric:harvester:PASSWORD`, `chmod 600`" in readme
