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
from harvester.vocabulary import ExitCode
from tests.conftest import scalar
from tests.subproc import start
from tests.test_nightly import NIGHT, SEED_KEY, make_world

EVIL_TITLE = '<script>console.error("xss")</script> $5 & $10 <b>bold</b> "quoted"'
CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
)


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
            proc = start(
                world.db(),
                world.server,
                *args,
                "--no-progress",
                config=world.config,
                HARVESTER_NOW=when.isoformat(),
                ALTMETRIC_API_KEY=SEED_KEY,
            )
            _, err = proc.communicate(timeout=120)
            assert proc.returncode in (ExitCode.OK, ExitCode.SOME_FAILED), err
        engine = open_database(f"sqlite:///{world.db()}")
        with engine.begin() as conn:  # titles can hold HTML, and dollars that matplotlib would read as math
            conn.execute(
                text("update outputs set title = :t where altmetric_id = (select altmetric_id from outputs order by score desc limit 1)"),
                {"t": EVIL_TITLE},
            )
        assert scalar(engine, "select count(*) from nightly_runs") == 1
        assert scalar(engine, "select count(*) from job_items where status = 'failed'") == 1
        engine.dispose()
        yield world.db()


def run_report(db: Path, out: Path) -> str:
    result = CliRunner().invoke(cli, ["--database", f"sqlite:///{db}", "report", "-o", str(out)], env={"HARVESTER_CONFIG": ""})
    assert result.exit_code == ExitCode.OK, result.output
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
    assert 'Data: <a href="https://www.altmetric.com/">Altmetric.com</a>' in page
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
    result = CliRunner().invoke(
        cli, ["--database", f"sqlite:///{tmp_path / 'none.db'}", "report", "-o", str(tmp_path / "r.html")], env={"HARVESTER_CONFIG": ""}
    )
    assert result.exit_code == ExitCode.ERROR and "there is no database" in result.output
    assert not (tmp_path / "none.db").exists()


def test_without_matplotlib_a_one_line_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "h.db"
    open_database(f"sqlite:///{db}").dispose()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = CliRunner().invoke(
        cli, ["--database", f"sqlite:///{db}", "report", "-o", str(tmp_path / "r.html")], env={"HARVESTER_CONFIG": ""}
    )
    assert result.exit_code == ExitCode.ERROR
    assert result.output.strip().splitlines() == ["Error: the report needs matplotlib: pip install 'altmetric-harvester[report]'"]


def _limited(limit: int) -> Callable[[], None]:
    """A child whose files cannot grow past `limit` bytes: a write past it fails with EFBIG, as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failed_write_leaves_the_earlier_report_whole_and_no_temporary_file(tmp_path: Path) -> None:
    db = tmp_path / "harvest.db"
    assert CliRunner().invoke(cli, ["--database", f"sqlite:///{db}", "db", "upgrade"]).exit_code == ExitCode.OK
    earlier = tmp_path / "report.html"
    earlier.write_text("<html>the earlier report</html>")
    proc = subprocess.run(
        [sys.executable, "-m", "harvester", "--database", f"sqlite:///{db}", "report", "-o", str(earlier)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited(1000),
        cwd=tmp_path,
    )
    assert proc.returncode == ExitCode.ERROR, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"Error: cannot write {earlier}: File too large"), line
    assert earlier.read_text() == "<html>the earlier report</html>"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("harvest.db")] == ["report.html"]  # no temporary file


# --- the report as a director sees it (issue 20, item 3) -------------------------------------------

# Run in a copy of the page without its Content-Security-Policy: measures the layout as Chromium drew it.
MEASURE = """<script>
window.addEventListener('load', () => {
  const lines = (el) => { const r = document.createRange(); r.selectNodeContents(el); return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; };
  document.body.setAttribute('data-measure', JSON.stringify({
    page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    tables: [...document.querySelectorAll('.scroll')].map(d => [d.querySelector('table').className, d.scrollWidth - d.clientWidth]),
    dates: [...document.querySelectorAll('td.date')].map(td => [td.textContent, lines(td)]),
    published: [...document.querySelectorAll('table.top-outputs tbody td:nth-child(5)')].map(td => td.className),
    last_header: [...document.querySelectorAll('table.top-outputs th')].pop().getBoundingClientRect().right,
    top_right: document.querySelector('table.top-outputs').parentElement.getBoundingClientRect().right,
  }));
});
</script>"""


def measure(page: Path, tmp: Path, width: int) -> dict[str, Any]:
    """The page's layout at `width` px in headless Chromium, and a screenshot of it (printed path)."""
    import json

    probe = tmp / f"{page.stem}-{width}.measure.html"
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text(encoding="utf-8"))
    probe.write_text(text.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    shot = tmp / f"{page.stem}-{width}.png"
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        f"--user-data-dir={tmp / f'profile-{width}'}",
        f"--window-size={width},2000",
        "--dump-dom",
        probe.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp)})
    found = re.search(r'data-measure="([^"]*)"', result.stdout)
    assert found, result.stderr[-2000:]
    shot_command = [c for c in command if c not in ("--dump-dom", probe.as_uri())] + [f"--screenshot={shot}", page.as_uri()]
    subprocess.run(shot_command, capture_output=True, timeout=90, env={**os.environ, "HOME": str(tmp)})
    print(f"\nscreenshot at {width} px: {shot}", file=sys.stderr)
    import html as html_module

    measured: dict[str, Any] = json.loads(html_module.unescape(found.group(1)))
    return measured


LONG_DOI = "10.1002/(sici)1097-4636(199706)35:4<473::aid-jbm8>3.0.co;2-c"
LONG_JOURNAL = "Proceedings of the National Academy of Sciences of the United States of America"


def test_the_report_fits_1280_and_1400_px_with_dates_whole_and_one_number_format(harvested: Path, tmp_path: Path) -> None:
    db = tmp_path / "long.db"
    shutil.copy(harvested, db)
    engine = open_database(f"sqlite:///{db}")
    with engine.begin() as conn:  # what made the Top-20 table overflow: long DOIs and journal names
        top = [r[0] for r in conn.execute(text("select altmetric_id from outputs where score is not null order by score desc limit 3"))]
        conn.execute(
            text("update outputs set doi = :d, journal = :j where altmetric_id = :i"), {"d": LONG_DOI, "j": LONG_JOURNAL, "i": top[1]}
        )
        conn.execute(
            text(
                "update outputs set doi = '10.1016/j.jclepro.2020.123456789', journal = 'International Journal of Environmental Research and Public Health' where altmetric_id = :i"
            ),
            {"i": top[2]},
        )
    engine.dispose()
    page = tmp_path / "report.html"
    html = run_report(db, page)
    for width in (1280, 1400):
        m = measure(page, tmp_path, width)
        assert m["page"] == 0, f"the page scrolls sideways at {width} px"
        assert [t for t in m["tables"] if t[1] > 0] == [], f"tables that scroll sideways at {width} px: {m['tables']}"
        assert m["last_header"] <= m["top_right"] + 0.5  # "journal pct" is whole, not cut to "journa"
        assert m["published"] and set(m["published"]) == {"date"}
        wrapped = [d for d in m["dates"] if d[1] > 1]
        assert len(m["dates"]) > 20 and wrapped == [], f"dates that wrap at {width} px: {wrapped}"
    # One number format for scores: two decimals, thousands separated; in the movers table and the chart's labels.
    score = r"[+-]?\d{1,3}(?:,\d{3})*\.\d{2}"
    movers = html.split('<table class="movers">')[1].split("</table>")[0]
    cells = re.findall(r"<td class=num>([^<]*)</td>", movers)
    assert len(cells) >= 6 and all(re.fullmatch(score, c) for c in cells), cells
    assert re.findall(rf"\(({score})\)", html.split('id="chart-movers"')[1].split("</figure>")[0])
    top_scores = re.findall(r"<td class=num>([^<]*)</td>", html.split('<table class="top-outputs">')[1].split("</tr>")[1])
    assert re.fullmatch(score, top_scores[1]), top_scores
    # Plural agreement, and counts of jobs with whole ticks only (a single status is a line, not one bar).
    assert '2</div><div class="label">days in the time series' in html and '1</div><div class="label">nightly finished' in html
    assert re.search(r'<p class="meta" id="status-counts">Jobs: \d+ finished\. Items: [\d,]+ done, 1 failed, \d+ not found\.</p>', html)
    chart = html.split('id="chart-jobs"')[1].split("</figure>")[0]
    labels = [t.strip() for t in re.findall(r"<text\b[^>]*>([^<]*)</text>", chart)]
    assert "Items by status" in labels and "Jobs by status" not in labels, labels
    ticks = [t for t in labels if re.fullmatch(r"[\d.,]+", t)]
    assert len(ticks) > 3 and not [t for t in ticks if "." in t], ticks
    # Where the data came from: the fake's URL, the tier, the dates, and that it is not Altmetric's.
    assert re.search(
        r'id="provenance">Where the data came from: the API at <code>http://127\.0\.0\.1:\d+/v1</code>; tier commercial; harvested \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d \(UTC\)\.',
        html,
    )
    assert 'id="not-altmetric"><strong>Not Altmetric data.</strong>' in html


def test_one_day_of_snapshots_is_one_day(harvested: Path, tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    shutil.copy(harvested, db)
    engine = open_database(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("delete from counts_snapshots where harvested_on < (select max(harvested_on) from counts_snapshots)"))
    engine.dispose()
    html = run_report(db, tmp_path / "one.html")
    assert '1</div><div class="label">day in the time series' in html and "1 days" not in html
