"""The writer process logs as the main process does: redacted, in UTC lines, silent under -q.

A real harvest in a subprocess against a small HTTP server on 127.0.0.1 whose answer the
database refuses (a readers count past 64 bits), for an id that carries the key: the writer's
warning about the refused item then names the key, unless the writer redacts it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from harvester.vocabulary import ExitCode
from tests.conftest import KEY, SAMPLES

BODY = json.loads((SAMPLES / "counts_docs-example_10.1038-news.2011.498.json").read_text())
REFUSED_DOI = f"10.5555/{KEY}"  # a user's list can hold anything; the key must still never be shown
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ WARNING harvester\.store: the database refused item 10\.5555/\*\*\*: ", re.M)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        doi = unquote(urlsplit(self.path).path.removeprefix("/v1/doi/"))
        body = dict(BODY, doi=doi, altmetric_id=abs(hash(doi)) % 10**9, readers={"mendeley": 10**30})
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def harvest(tmp_path: Path, api: str, *options: str) -> subprocess.CompletedProcess[str]:
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{REFUSED_DOI}\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "HARVESTER_API_URL": api,
        "ALTMETRIC_API_KEY": KEY,
        "HARVESTER_TIER": "commercial",
        "HARVESTER_CONFIG": "",
    }
    return subprocess.run(
        [sys.executable, "-m", "harvester", "--database", f"sqlite:///{tmp_path / 'h.db'}", *options, "harvest", "--no-progress", str(ids)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_the_writers_warning_is_formatted_and_redacted(tmp_path: Path, api: str) -> None:
    result = harvest(tmp_path, api)
    assert result.returncode == ExitCode.SOME_FAILED, result.stderr  # the refused item failed alone
    assert KEY not in result.stderr and KEY not in result.stdout, result.stderr
    assert LINE.search(result.stderr), result.stderr


def test_quiet_silences_the_writers_warning(tmp_path: Path, api: str) -> None:
    result = harvest(tmp_path, api, "-q")
    assert result.returncode == ExitCode.SOME_FAILED, result.stderr
    assert "refused" not in result.stderr and KEY not in result.stderr, result.stderr
