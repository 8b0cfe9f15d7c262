"""`harvester report`: a real harvest, the report written by the CLI, then opened in real headless Chromium.

Chromium runs with the network cut off (every host resolves to nothing, every
request goes to a dead proxy): the page must render with no console error, every
chart present and drawn, and a screenshot is saved in the test's tmp dir (its
path is printed; `pytest -s` shows it). Without Chromium the browser tests skip,
loudly, unless CI or HARVESTER_REQUIRE_BROWSER is set: then they fail.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from harvester.cli import cli
from harvester.db import open_database
from harvester.report import CHARTS
from tests.conftest import scalar
from tests.subproc import start
from tests.test_nightly import NIGHT, SEED_KEY, make_world

EVIL_TITLE = '<script>console.error("xss")</script> $5 & $10 <b>bold</b> "quoted"'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def chromium() -> str:
    if CHROMIUM:
        return CHROMIUM
    reason = "CHROMIUM IS NOT INSTALLED: the report is not checked in a browser (apt-get install chromium)"
    if os.environ.get("CI") or os.environ.get("HARVESTER_REQUIRE_BROWSER"):
        pytest.fail(reason + "; CI / HARVESTER_REQUIRE_BROWSER require it")
    pytest.skip(reason)


def browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a file, offline: no DNS, a dead proxy, no background traffic."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1200,5200",  # the whole report, top to bottom
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp)})


# Chromium logs console messages as `INFO:CONSOLE(12)] "..."` or `INFO:CONSOLE:12] "..."`, by version.
CONSOLE = re.compile(r":CONSOLE(\(\d+\)|:\d+)\]|Uncaught|Refused to|net::ERR_")


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture(scope="module")
def harvested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A seed harvest (one DOI fails with a 400), then a nightly the next day: snapshots, movers, a report."""
    tmp = tmp_path_factory.mktemp("report")
    ids = tmp / "ids.txt"
    ids.write_text("".join(f"10.5555/report.{i:04d}\n" for i in range(30)) + "10.1038/news.2011.490\n10.5555/badrequest.1\n")
    for world in make_world(tmp):
        for when, args in ((NIGHT - timedelta(days=1), ("harvest", str(ids))), (NIGHT, ("nightly",))):
            world.clock.now = when.replace(tzinfo=UTC).timestamp()
            proc = start(world.db(), world.server, *args, "--no-progress", config=world.config,
                         HARVESTER_NOW=when.isoformat(), ALTMETRIC_API_KEY=SEED_KEY)  # fmt: skip
            _, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 3), err
        engine = open_database(f"sqlite:///{world.db()}")
        with engine.begin() as conn:  # titles can hold HTML, and dollars that matplotlib would read as math
            conn.execute(text("update outputs set title = :t where altmetric_id = (select altmetric_id from outputs order by score desc limit 1)"), {"t": EVIL_TITLE})
        assert scalar(engine, "select count(*) from nightly_runs") == 1
        assert scalar(engine, "select count(*) from job_items where status = 'failed'") == 1
        engine.dispose()
        yield world.db()


def run_report(db: Path, out: Path) -> str:
    result = CliRunner().invoke(cli, ["--database", f"sqlite:///{db}", "report", "-o", str(out)], env={"HARVESTER_CONFIG": ""})
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8")


class Dom(HTMLParser):
    """Ids of elements, with the tags and text inside each chart figure."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.open_charts: list[tuple[str, int]] = []
        self.charts: dict[str, dict[str, Any]] = {}
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        self.depth += 1
        if tag == "figure" and str(a.get("id", "")).startswith("chart-"):
            name = str(a["id"]).removeprefix("chart-")
            self.charts[name] = {"tags": [], "text": "", "viewbox": None}
            self.open_charts.append((name, self.depth))
        for name, _ in self.open_charts:
            self.charts[name]["tags"].append(tag)
            if tag == "svg" and self.charts[name]["viewbox"] is None:
                self.charts[name]["viewbox"] = a.get("viewbox")

    def handle_endtag(self, tag: str) -> None:
        if self.open_charts and tag == "figure" and self.open_charts[-1][1] == self.depth:
            self.open_charts.pop()
        self.depth -= 1

    def handle_data(self, data: str) -> None:
        for name, _ in self.open_charts:
            self.charts[name]["text"] += data


def test_the_report_renders_in_headless_chromium_offline(harvested: Path, tmp_path: Path) -> None:
    page = run_report(harvested, tmp_path / "report.html")
    # Self-contained: nothing to fetch, nothing to run.
    assert "<script" not in page.lower().replace("&lt;script", "")
    assert not re.search(r"""\s(src|srcset)=|<link\b|<iframe|<object|@import|url\((?!#)""", page, re.I)
    assert "Content-Security-Policy" in page
    # The attribution and the terms reminder.
    assert "Data: <a href=\"https://www.altmetric.com/\">Altmetric.com</a>" in page
    assert "must not be published or redistributed" in page
    # Text from the database is escaped.
    assert "&lt;script&gt;console.error(&quot;xss&quot;)&lt;/script&gt;" in page and "<b>bold</b>" not in page

    # One browser run: the DOM after load on stdout, the screenshot in the tmp dir, the console on stderr.
    shot = tmp_path / "report.png"
    dom = browse(tmp_path / "report.html", tmp_path, "--dump-dom", f"--screenshot={shot}", "--hide-scrollbars")
    assert dom.returncode == 0 and shot.exists(), dom.stderr[-2000:]
    assert not console_errors(dom.stderr), console_errors(dom.stderr)
    parsed = Dom()
    parsed.feed(dom.stdout)
    assert "script" not in parsed.tags and "b" not in parsed.tags  # the evil title stayed text
    assert {"headline", "attribution", "card-outputs"} <= parsed.ids
    assert set(parsed.charts) == set(CHARTS), f"charts in the page: {sorted(parsed.charts)}"
    for name, chart in parsed.charts.items():
        width, height = (float(v) for v in str(chart["viewbox"]).split()[2:])
        assert width > 100 and height > 100, (name, chart["viewbox"])
        drawn = chart["tags"].count("path") + chart["tags"].count("use") + chart["tags"].count("rect")
        assert drawn >= 5, f"chart {name} draws nothing: {chart['tags'][:20]}"
        assert len(chart["text"].strip()) > 10, f"chart {name} has no labels"
    # The SVG ids are unique across the document (each chart's are prefixed).
    ids = re.findall(r'\bid="([^"]+)"', dom.stdout)
    assert len(ids) == len(set(ids))
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 5200)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50, "the screenshot is (nearly) blank"
    print(f"\nscreenshot of the report: {shot}", file=sys.stderr)


def test_the_console_check_catches_errors_and_fetches(tmp_path: Path) -> None:
    """The checks above can fail: a page with a script error and a fetch is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="https://example.org/x.png"><script>console.error("boom")</script></body></html>')
    result = browse(page, tmp_path, "--dump-dom", "--virtual-time-budget=3000")
    assert any('"boom"' in line for line in console_errors(result.stderr)), result.stderr[-2000:]


def test_an_empty_database_gives_a_clear_report(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    open_database(f"sqlite:///{db}").dispose()
    page = run_report(db, tmp_path / "empty.html")
    assert "Nothing harvested yet" in page and 'id="nothing-yet"' in page
    assert "Altmetric.com" in page and "<figure" not in page


def test_the_command_needs_an_existing_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--database", f"sqlite:///{tmp_path / 'none.db'}", "report", "-o", str(tmp_path / "r.html")], env={"HARVESTER_CONFIG": ""})
    assert result.exit_code == 1 and "there is no database" in result.output
    assert not (tmp_path / "none.db").exists()


def test_without_matplotlib_a_one_line_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "h.db"
    open_database(f"sqlite:///{db}").dispose()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = CliRunner().invoke(cli, ["--database", f"sqlite:///{db}", "report", "-o", str(tmp_path / "r.html")], env={"HARVESTER_CONFIG": ""})
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: the report needs matplotlib: pip install 'altmetric-harvester[report]'"]


def _limited(limit: int) -> Callable[[], None]:
    """A child whose files cannot grow past `limit` bytes: a write past it fails with EFBIG, as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failed_write_leaves_the_earlier_report_whole_and_no_temporary_file(tmp_path: Path) -> None:
    db = tmp_path / "harvest.db"
    assert CliRunner().invoke(cli, ["--database", f"sqlite:///{db}", "db", "upgrade"]).exit_code == 0
    earlier = tmp_path / "report.html"
    earlier.write_text("<html>the earlier report</html>")
    proc = subprocess.run(
        [sys.executable, "-m", "harvester", "--database", f"sqlite:///{db}", "report", "-o", str(earlier)],
        capture_output=True, text=True, timeout=120, preexec_fn=_limited(1000), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"Error: cannot write {earlier}: File too large"), line
    assert earlier.read_text() == "<html>the earlier report</html>"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("harvest.db")] == ["report.html"]  # no temporary file

