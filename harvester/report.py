"""`harvester report`: one self-contained HTML file with the harvest's numbers and charts.

collect() reads the database (a few aggregate queries, so it stays quick on
millions of rows) into a ReportData; render() turns that into HTML. The charts
are matplotlib figures inlined as SVG: the file needs no network, no JavaScript
and no other file, and a Content-Security-Policy forbids it to fetch anything.
Every text from the database is escaped (titles can hold HTML).
"""

from __future__ import annotations

import html
import importlib
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from sqlalchemy import Engine, Integer, and_, func, select, text

from harvester import __version__, clock, schema
from harvester.errors import HarvesterError
from harvester.export import ALL, Origin, OutputSet, origin, replace_file
from harvester.log import redact

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

INSTALL_HINT = "the report needs matplotlib: pip install 'altmetric-harvester[report]'"
TOP_OUTPUTS = 20
MOVERS = 6
MOVERS_WINDOW_DAYS = 30
SOURCES_SHOWN = 15
NIGHTLIES_SHOWN = 60
JOBS_SHOWN = 20
FAILED_SHOWN = 25
# Upper edges of the score histogram's bins; the last bin is open.
SCORE_EDGES = (1, 5, 10, 20, 50, 100, 250, 500, 1000)
CHARTS = ("scores", "sources", "movers", "nightlies", "jobs")


class ReportError(HarvesterError):
    """The report cannot be made (matplotlib missing, the file not writable)."""


@dataclass
class Mover:
    """One output's score time series, for the movers chart."""

    altmetric_id: int
    doi: str | None
    title: str | None
    change: float
    points: list[tuple[date, float]]

    @property
    def label(self) -> str:
        name = self.doi or f"altmetric id {self.altmetric_id}"
        return f"{name} ({score_text(self.change, sign=True)})"


def score_text(value: float, sign: bool = False) -> str:
    """A score as the report prints every score: thousands separated, always two decimals."""
    return f"{value:+,.2f}" if sign else f"{value:,.2f}"


def plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


@dataclass
class ReportData:
    """Everything the report shows, read from the database in one go."""

    generated_at: datetime
    chosen: OutputSet = ALL
    origin: Origin | None = None
    headline: dict[str, Any] = field(default_factory=dict)
    score_bins: list[tuple[str, int]] = field(default_factory=list)
    sources: list[tuple[str, int, int]] = field(default_factory=list)  # source, accounts, outputs
    top: list[dict[str, Any]] = field(default_factory=list)
    movers: list[Mover] = field(default_factory=list)
    movers_since: date | None = None
    nightlies: list[dict[str, Any]] = field(default_factory=list)
    jobs_by_status: list[tuple[str, int]] = field(default_factory=list)
    items_by_status: list[tuple[str, int]] = field(default_factory=list)
    recent_jobs: list[dict[str, Any]] = field(default_factory=list)
    failed_items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.chosen.everything and not self.headline.get("outputs") and not self.jobs_by_status


def require_matplotlib() -> None:
    """Fail early, with the install hint, when the optional extra is missing."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise ReportError(INSTALL_HINT) from None


def write_report(engine: Engine, path: Path, now: datetime | None = None, chosen: OutputSet = ALL) -> ReportData:
    """Collect, render and write the report on a set of outputs (default: all) to `path`; returns what it showed."""
    require_matplotlib()
    data = collect(engine, now, chosen)
    page = render(data)
    try:
        # Beside it, then renamed over it: a full disk leaves the earlier report whole, not a truncated one.
        replace_file(path, page.encode("utf-8"))
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from None
    return data


# ---------------------------------------------------------------- data


def _rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def collect(engine: Engine, now: datetime | None = None, chosen: OutputSet = ALL) -> ReportData:
    """Read what the report shows. Current outputs only (not those merged into another).

    A chosen set (--job, --list) restricts the outputs to its own and the job health to its
    jobs; the nightlies stay the database's (a nightly refreshes every list).
    """
    data = ReportData(generated_at=now or clock.utcnow(), chosen=chosen)
    data.origin = origin(engine, chosen)
    # `AND <in_set>`: the set's outputs; `<in_jobs>`: its jobs. Both empty for all outputs.
    ids = chosen.ids_sql()
    in_set = "" if chosen.everything else f" AND altmetric_id IN ({ids})"
    in_set_o = "" if chosen.everything else f" AND o.altmetric_id IN ({ids})"
    job_list = ", ".join(str(int(j)) for j in chosen.jobs) or "NULL"
    [head] = _rows(
        engine,
        f"""SELECT COUNT(*) AS outputs, COUNT(doi) AS with_doi, COUNT(score) AS scored,
                  SUM(CASE WHEN score > 0 THEN 1 ELSE 0 END) AS with_attention,
                  AVG(score) AS mean_score, MAX(score) AS max_score,
                  SUM(posts_count) AS posts, SUM(accounts_count) AS accounts, SUM(readers_count) AS readers,
                  MIN(first_harvested_at) AS first_harvest, MAX(harvested_at) AS last_harvest
           FROM outputs WHERE superseded_by IS NULL{in_set}""",
    )
    merged_into = "" if chosen.everything else f" AND superseded_by IN ({ids})"
    head["superseded"] = _rows(engine, f"SELECT COUNT(*) AS n FROM outputs WHERE superseded_by IS NOT NULL{merged_into}")[0]["n"]
    head["mentions"] = _rows(engine, f"SELECT COUNT(*) AS n FROM mentions WHERE 1 = 1{in_set}")[0]["n"]
    head["snapshot_days"] = _rows(engine, f"SELECT COUNT(DISTINCT harvested_on) AS n FROM counts_snapshots WHERE 1 = 1{in_set}")[0]["n"]
    head["first_harvest"] = _as_datetime(head["first_harvest"])
    head["last_harvest"] = _as_datetime(head["last_harvest"])
    data.headline = head

    bins = " ".join(f"WHEN score < {edge} THEN {n}" for n, edge in enumerate(SCORE_EDGES))
    counted = {
        r["bin"]: r["n"]
        for r in _rows(
            engine,
            f"""SELECT CASE {bins} ELSE {len(SCORE_EDGES)} END AS bin, COUNT(*) AS n
                FROM outputs WHERE superseded_by IS NULL AND score IS NOT NULL{in_set} GROUP BY 1""",
        )
    }
    lows = (0, *SCORE_EDGES)
    labels = [f"{lo}–{hi}" for lo, hi in zip(lows, SCORE_EDGES, strict=False)] + [f"{SCORE_EDGES[-1]}+"]
    if counted:
        data.score_bins = [(label, int(counted.get(n, 0))) for n, label in enumerate(labels)]

    data.sources = [
        (r["source"], int(r["accounts"] or 0), int(r["outputs"]))
        for r in _rows(
            engine,
            f"""SELECT s.source, SUM(s.unique_users_count) AS accounts, COUNT(*) AS outputs
               FROM source_counts s JOIN outputs o ON o.altmetric_id = s.altmetric_id
               WHERE o.superseded_by IS NULL{in_set_o}
               GROUP BY s.source
               ORDER BY accounts DESC, s.source""",
        )
        if r["accounts"]
    ]

    data.top = _rows(
        engine,
        f"""SELECT altmetric_id, doi, title, journal, published_on, score, accounts_count, posts_count,
                   twitter_accounts, news_accounts, blogs_accounts, policy_accounts, wikipedia_accounts,
                   mendeley_readers, journal_percentile
            FROM output_summary
            WHERE score IS NOT NULL{in_set}
            ORDER BY score DESC, altmetric_id
            LIMIT {TOP_OUTPUTS}""",
    )
    data.movers, data.movers_since = _movers(engine, chosen)
    data.nightlies = _nightlies(engine)

    of_jobs = "" if chosen.everything else f" WHERE id IN ({job_list})"
    of_items = "" if chosen.everything else f" WHERE job_id IN ({job_list})"
    data.jobs_by_status = [
        (r["status"], int(r["n"]))
        for r in _rows(engine, f"SELECT status, COUNT(*) AS n FROM jobs{of_jobs} GROUP BY status ORDER BY status")
    ]
    data.items_by_status = [
        (r["status"], int(r["n"]))
        for r in _rows(engine, f"SELECT status, COUNT(*) AS n FROM job_items{of_items} GROUP BY status ORDER BY status")
    ]
    data.recent_jobs = _rows(
        engine,
        f"""SELECT j.id, j.name, j.endpoint, j.status, j.total_items, j.created_at, j.finished_at, j.last_error,
                   SUM(CASE WHEN i.status = 'done' THEN 1 ELSE 0 END) AS done,
                   SUM(CASE WHEN i.status = 'not_found' THEN 1 ELSE 0 END) AS not_found,
                   SUM(CASE WHEN i.status = 'failed' THEN 1 ELSE 0 END) AS failed,
                   SUM(CASE WHEN i.status = 'pending' THEN 1 ELSE 0 END) AS pending
            FROM (SELECT * FROM jobs{of_jobs} ORDER BY id DESC LIMIT {JOBS_SHOWN}) j
            LEFT JOIN job_items i ON i.job_id = j.id
            GROUP BY j.id, j.name, j.endpoint, j.status, j.total_items, j.created_at, j.finished_at, j.last_error
            ORDER BY j.id DESC""",
    )
    data.failed_items = _rows(
        engine,
        f"""SELECT job_id, input, identifier, attempts, http_status, last_error, updated_at
            FROM job_items WHERE status = 'failed'{"" if chosen.everything else f" AND job_id IN ({job_list})"}
            ORDER BY updated_at DESC, job_id DESC, line_no
            LIMIT {FAILED_SHOWN}""",
    )
    return data


def _movers(engine: Engine, chosen: OutputSet = ALL) -> tuple[list[Mover], date | None]:
    """The outputs (of the set) whose score changed most over the last MOVERS_WINDOW_DAYS days of snapshots."""
    snaps = schema.counts_snapshots
    in_set = snaps.c.altmetric_id.in_(text(chosen.ids_sql()).columns(altmetric_id=Integer)) if not chosen.everything else None
    with engine.connect() as conn:
        last_day = conn.execute(select(func.max(snaps.c.harvested_on)).where(*([in_set] if in_set is not None else []))).scalar()
        if last_day is None:
            return [], None
        since = _as_date(last_day) - timedelta(days=MOVERS_WINDOW_DAYS)
        window = (
            select(
                snaps.c.altmetric_id,
                func.min(snaps.c.harvested_on).label("first_on"),
                func.max(snaps.c.harvested_on).label("last_on"),
            )
            .where(snaps.c.harvested_on >= since, snaps.c.score.is_not(None), *([in_set] if in_set is not None else []))
            .group_by(snaps.c.altmetric_id)
            .having(func.count() > 1)
            .subquery()
        )
        first, last = snaps.alias("f"), snaps.alias("l")
        change = (last.c.score - first.c.score).label("change")
        o = schema.outputs
        query = (
            select(window.c.altmetric_id, change, o.c.doi, o.c.title)
            .join(first, and_(first.c.altmetric_id == window.c.altmetric_id, first.c.harvested_on == window.c.first_on))
            .join(last, and_(last.c.altmetric_id == window.c.altmetric_id, last.c.harvested_on == window.c.last_on))
            .outerjoin(o, o.c.altmetric_id == window.c.altmetric_id)
            .where(last.c.score != first.c.score)
            .order_by(func.abs(last.c.score - first.c.score).desc(), window.c.altmetric_id)
            .limit(MOVERS)
        )
        picked = conn.execute(query).all()
        if not picked:
            return [], since
        ids = [r.altmetric_id for r in picked]
        points: dict[int, list[tuple[date, float]]] = {i: [] for i in ids}
        series = (
            select(snaps.c.altmetric_id, snaps.c.harvested_on, snaps.c.score)
            .where(snaps.c.altmetric_id.in_(ids), snaps.c.harvested_on >= since, snaps.c.score.is_not(None))
            .order_by(snaps.c.altmetric_id, snaps.c.harvested_on)
        )
        for r in conn.execute(series):
            points[r.altmetric_id].append((_as_date(r.harvested_on), float(r.score)))
    return [Mover(r.altmetric_id, r.doi, r.title, float(r.change), points[r.altmetric_id]) for r in picked], since


def _nightlies(engine: Engine) -> list[dict[str, Any]]:
    """Every nightly job, oldest first, with its report when it finished (nightly_runs)."""
    found = _rows(
        engine,
        f"""SELECT j.id AS job_id, j.status, j.created_at, r.night, r.discovered, r.new_outputs, r.refreshed,
                   r.not_found, r.failed, r.started_at, r.finished_at
            FROM (SELECT * FROM jobs WHERE endpoint = 'nightly' ORDER BY id DESC LIMIT {NIGHTLIES_SHOWN}) j
            LEFT JOIN nightly_runs r ON r.job_id = j.id
            ORDER BY j.id""",
    )
    for r in found:
        r["night"] = _as_date(r["night"] if r["night"] is not None else r["created_at"])
    return found


# ---------------------------------------------------------------- charts


def _mpl_text(value: str, limit: int = 60) -> str:
    """Text for a matplotlib label: shortened, and `$` escaped so that no title is read as math."""
    value = " ".join(value.split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.replace("$", r"\$")


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^)"]+)')


def _svg(figure: Figure, prefix: str) -> str:
    """The figure as an inline <svg>, its ids prefixed: several SVGs share one HTML document's ids."""
    buf = io.StringIO()
    figure.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = _REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    # Never drawn larger than its natural size: a chart cropped to one panel keeps the text size of the others.
    width = re.match(r'<svg[^>]*\swidth="([\d.]+)pt"', svg)
    if width:
        svg = svg.replace("<svg", f'<svg style="max-width: {float(width.group(1)) * 4 / 3:.0f}px"', 1)
    return svg


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure


def _style() -> dict[str, Any]:
    return {
        "svg.fonttype": "none",  # text stays text: smaller, selectable, found by the browser's search
        "svg.hashsalt": "altmetric-harvester",  # the same data gives the same file
        "font.family": "sans-serif",
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "text.usetex": False,
    }


def _whole_ticks(axis: Any) -> None:
    """Ticks on whole numbers only: a count of jobs or outputs has no 0.5."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _bars(
    labels: Sequence[str], values: Sequence[int], title: str, xlabel: str, horizontal: bool = False, color: str = "#3b6ea5"
) -> Figure:
    figure = _figure(9, max(2.5, 0.28 * len(labels) + 1) if horizontal else 3.6)
    ax = figure.add_subplot()
    positions = list(range(len(labels)))
    if horizontal:
        ax.barh(positions, values, color=color)
        if values and min(values) > 0 and max(values) > 50 * min(values):
            ax.set_xscale("log")  # one source (X/Twitter, usually) dwarfs the rest
        else:
            _whole_ticks(ax.xaxis)
        ax.set_yticks(positions, [_mpl_text(v, 30) for v in labels])
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        for p, v in zip(positions, values, strict=True):
            ax.annotate(f"{v:,}", (v, p), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    else:
        ax.bar(positions, values, color=color)
        _whole_ticks(ax.yaxis)
        ax.set_xticks(positions, [_mpl_text(v, 20) for v in labels])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("outputs")
        for p, v in zip(positions, values, strict=True):
            ax.annotate(f"{v:,}", (p, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    ax.set_title(title, loc="left")
    return figure


def _movers_chart(movers: list[Mover], since: date | None) -> Figure:
    """Small multiples: each mover on its own scale, or a +16 on a score of 5,000 would be a flat line."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    columns = 2 if len(movers) > 1 else 1
    rows = (len(movers) + columns - 1) // columns
    figure = _figure(9, 1.9 * rows + 0.6)
    figure.suptitle(f"Daily score of the biggest movers since {since}", x=0.01, ha="left", fontsize=11)
    days = sorted({d for m in movers for d, _ in m.points})
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True)
    for n, ax in enumerate(axes.flat):
        if n >= len(movers):
            ax.set_visible(False)
            continue
        m = movers[n]
        color = "#2e8b57" if m.change > 0 else "#c0392b"
        ax.plot(cast(Any, [d for d, _ in m.points]), [s for _, s in m.points], marker="o", markersize=3, color=color)
        ax.set_title(_mpl_text(m.label, 45), loc="left", fontsize=9)
        ax.margins(y=0.25)
        if len(days) <= 8:
            ax.set_xticks(cast(Any, days), [d.strftime("%b %d") for d in days])
        else:
            locator = AutoDateLocator(maxticks=6)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        ax.tick_params(labelsize=8)
    return figure


def _nightlies_chart(nightlies: list[dict[str, Any]]) -> Figure:
    finished = [n for n in nightlies if n["new_outputs"] is not None]
    figure = _figure(9, 3.8)
    ax = figure.add_subplot()
    positions = list(range(len(finished)))
    bottom = [0] * len(finished)
    for key, label, color in (
        ("new_outputs", "new", "#2e8b57"),
        ("refreshed", "refreshed", "#3b6ea5"),
        ("not_found", "not found", "#b0b0b0"),
        ("failed", "failed", "#c0392b"),
    ):
        values = [int(n[key] or 0) for n in finished]
        ax.bar(positions, values, bottom=bottom, label=label, color=color, width=0.6)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(
        positions,
        [n["night"].isoformat() for n in finished],
        rotation=45 if len(finished) > 8 else 0,
        ha="right" if len(finished) > 8 else "center",
    )
    ax.set_xlim(-0.75, max(len(finished), 6) - 0.25)  # a first nightly is one slim bar, not the whole width
    ax.set_ylabel("outputs")
    _whole_ticks(ax.yaxis)
    ax.set_title("What each nightly did", loc="left")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return figure


def _jobs_chart(jobs_by_status: list[tuple[str, int]], items_by_status: list[tuple[str, int]]) -> Figure:
    colors = {
        "finished": "#2e8b57",
        "done": "#2e8b57",
        "failed": "#c0392b",
        "not_found": "#b0b0b0",
        "pending": "#e0a030",
        "running": "#3b6ea5",
    }
    figure = _figure(9, 3.2)
    # A single status is no chart (one bar filling the panel): the counts line under the chart says it.
    panels = [(rows, title) for rows, title in ((jobs_by_status, "Jobs by status"), (items_by_status, "Items by status")) if len(rows) > 1]
    for n, (rows, title) in enumerate(panels):
        ax = figure.add_subplot(1, 2, n + 1)
        labels = [s for s, _ in rows]
        values = [v for _, v in rows]
        positions = list(range(len(labels)))
        ax.barh(positions, values, color=[colors.get(s, "#7f8c8d") for s in labels])
        _whole_ticks(ax.xaxis)  # counts of jobs and items: no 0.5
        ax.margins(x=0.12)  # room for the count beside the longest bar
        ax.set_yticks(positions, [_mpl_text(s, 20) for s in labels])
        ax.invert_yaxis()
        for p, v in zip(positions, values, strict=True):
            ax.annotate(f"{v:,}", (v, p), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_title(title, loc="left")
    return figure


def charts(data: ReportData) -> dict[str, str]:
    """The inline SVG of each chart that has data, by name (CHARTS)."""
    import matplotlib

    out: dict[str, str] = {}
    with matplotlib.rc_context(cast(Any, _style())):
        figures: dict[str, Figure] = {}
        if data.score_bins:
            figures["scores"] = _bars(
                [b for b, _ in data.score_bins], [n for _, n in data.score_bins], "Outputs by Altmetric score", "score"
            )
        if data.sources:
            shown = data.sources[:SOURCES_SHOWN]
            labels = [s for s, _, _ in shown]
            values = [a for _, a, _ in shown]
            rest = sum(a for _, a, _ in data.sources[SOURCES_SHOWN:])
            if rest:
                labels.append(f"{len(data.sources) - SOURCES_SHOWN} other sources")
                values.append(rest)
            figures["sources"] = _bars(
                labels, values, "Accounts per source", "accounts (sum over outputs; log scale when they differ widely)", horizontal=True
            )
        if data.movers:
            figures["movers"] = _movers_chart(data.movers, data.movers_since)
        if any(n["new_outputs"] is not None for n in data.nightlies):
            figures["nightlies"] = _nightlies_chart(data.nightlies)
        if len(data.jobs_by_status) > 1 or len(data.items_by_status) > 1:
            figures["jobs"] = _jobs_chart(data.jobs_by_status, data.items_by_status)
        for name, figure in figures.items():
            out[name] = _svg(figure, f"c-{name}")
    return out


# ---------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    """Escaped text of any value; '' for NULL."""
    if value is None:
        return ""
    if isinstance(value, float):
        return html.escape(f"{value:,.2f}".rstrip("0").rstrip("."))
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, datetime):
        return html.escape(value.strftime("%Y-%m-%d %H:%M"))
    return html.escape(str(value))


def _day_text(value: Any) -> str:
    return "" if value is None else html.escape(str(value)[:10])


def _table(
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
    numeric: set[int] | None = None,
    css: str = "",
    classes: dict[int, str] | None = None,
) -> str:
    cls = {i: "num" for i in numeric or set()} | (classes or {})
    head = "".join(f"<th{f' class={cls[i]}' if i in cls else ''}>{html.escape(h)}</th>" for i, h in enumerate(headers))
    rows = "".join(
        "<tr>" + "".join(f"<td{f' class={cls[i]}' if i in cls else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in body
    )
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _chart(name: str, svgs: dict[str, str], caption: str, empty: str) -> str:
    if name not in svgs:
        return f'<p class="empty" id="chart-{name}-empty">{html.escape(empty)}</p>'
    return f'<figure class="chart" id="chart-{name}" role="img" aria-label="{html.escape(caption)}">{svgs[name]}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _doi_link(doi: Any) -> str:
    if not doi:
        return ""
    return f'<a href="https://doi.org/{html.escape(quote(str(doi), safe="/:;()._-<>[]"))}">{_e(doi)}</a>'


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2733;
       max-width: 1100px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #dde3ea; padding-bottom: 4px; }
.meta { color: #5b6b7c; margin: 0 0 16px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 10px; }
.card { border: 1px solid #dde3ea; border-radius: 6px; padding: 10px 12px; background: #f7f9fb; }
.card .value { font-size: 22px; font-weight: 600; } .card .label { color: #5b6b7c; font-size: 12px; }
figure.chart { margin: 12px 0; } figure.chart svg { width: 100%; max-width: 960px; height: auto; display: block; }
.scroll { overflow-x: auto; }
figcaption { color: #5b6b7c; font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #e8edf2; vertical-align: top; }
th { background: #f0f3f6; } td.num, th.num { text-align: right; } td.num, td.date { white-space: nowrap; }
td.title { min-width: 160px; overflow-wrap: anywhere; } td.error { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-word; }
/* The Top-20 table fits the page: long DOIs and journal names wrap (anywhere, if they must) instead of widening it. */
table.top-outputs { font-size: 12px; } table.top-outputs th, table.top-outputs td { padding: 4px 5px; }
td.doi { min-width: 13em; max-width: 17em; overflow-wrap: anywhere; } td.journal { min-width: 6em; max-width: 11em; overflow-wrap: anywhere; }
.provenance { margin: 0 0 6px; } .warning { border-left: 4px solid #c0392b; background: #fdf1ef; padding: 6px 10px; margin: 8px 0 16px; }
.empty { color: #5b6b7c; font-style: italic; }
.nothing { border: 1px dashed #b8c4d0; border-radius: 8px; padding: 24px; text-align: center; font-size: 16px; }
footer { margin-top: 40px; border-top: 1px solid #dde3ea; padding-top: 10px; color: #5b6b7c; font-size: 12px; }
"""

ATTRIBUTION = (
    'Data: <a href="https://www.altmetric.com/">Altmetric.com</a>. '
    "Altmetric data are subject to Altmetric's terms of use: data harvested with a free (academic) API "
    "key must not be published or redistributed, so keep this report to yourself and your team "
    "unless your licence allows more."
)


def _origin_lines(data: ReportData) -> list[str]:
    """Where the data came from: the API base URLs and tiers its jobs recorded, and when it was harvested.

    Data from any address other than Altmetric's API (the bundled fake, a test server) is said so,
    in a warning no one can miss: such a report must not pass for real data.
    """
    o = data.origin
    if o is None:
        return []
    urls = list(dict.fromkeys(a.url for a in o.apis))
    where = "the API at " + ", ".join(f"<code>{html.escape(u)}</code>" for u in urls) if urls else ""
    if o.unknown_jobs:
        jobs_text = f"{o.unknown_jobs:,} {plural(o.unknown_jobs, 'job', 'jobs')} run before the address was recorded"
        where = f"{where} and unknown ({jobs_text})" if where else f"an unknown API address ({jobs_text})"
    tiers = f"{plural(len(o.tiers), 'tier', 'tiers')} {', '.join(html.escape(t) for t in o.tiers)}" if o.tiers else "tier unknown"
    span = f"{_day_text(o.first) or '–'} to {_day_text(o.last) or '–'} (UTC)"
    out = [
        f'<p class="meta provenance" id="provenance">Where the data came from: {where or "no job has run yet"}; {tiers}; harvested {span}.</p>'
    ]
    if o.not_altmetric:
        names = ", ".join(f"<code>{html.escape(u)}</code>" for u in o.not_altmetric)
        out.append(
            f'<p class="warning" id="not-altmetric"><strong>Not Altmetric data.</strong> Some or all of these numbers came from {names}, '
            "not from Altmetric's API (<code>https://api.altmetric.com</code>): test data, e.g. from the bundled fake API.</p>"
        )
    return out


def render(data: ReportData) -> str:
    """The report as one HTML document (needs matplotlib for the charts)."""
    title = f"Altmetric harvest report: {data.chosen.title}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: no script, no font, no image but inline ones.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f'<h1>Altmetric harvest report: <span id="report-set">{html.escape(data.chosen.title)}</span></h1>',
        f'<p class="meta">Generated {_e(data.generated_at)} UTC by altmetric-harvester {_e(__version__)}.</p>',
        *_origin_lines(data),
    ]
    if not data.chosen.everything:
        jobs_text = ", ".join(str(j) for j in data.chosen.jobs)
        parts.append(
            f'<p class="meta" id="set-jobs">The outputs of {plural(len(data.chosen.jobs), "job", "jobs")} {jobs_text} '
            "(their done items, an output merged into another counted as the new one); the nightlies are the database's.</p>"
        )
    if data.empty:
        parts.append(
            '<div class="nothing" id="nothing-yet"><p><strong>Nothing harvested yet.</strong></p>'
            "<p>The database has no outputs and no jobs. Harvest a list of DOIs first, "
            "e.g. <code>harvester harvest dois.txt</code>, then run <code>harvester report</code> again.</p></div>"
        )
    else:
        parts += _body(data)
    parts.append(f'<footer id="attribution"><p>{ATTRIBUTION}</p></footer></body></html>')
    return "\n".join(parts) + "\n"


def _body(data: ReportData) -> list[str]:
    svgs = charts(data)
    h = data.headline
    nightlies = sum(1 for n in data.nightlies if n["new_outputs"] is not None)
    cards = [
        ("outputs", h["outputs"], "outputs (current)"),
        ("with-doi", h["with_doi"], "with a DOI"),
        ("with-attention", h["with_attention"] or 0, "with a score above 0"),
        ("mean-score", None if h["mean_score"] is None else score_text(float(h["mean_score"])), "mean score"),
        ("max-score", None if h["max_score"] is None else score_text(float(h["max_score"])), "highest score"),
        ("accounts", h["accounts"] or 0, "accounts that posted (sum)"),
        ("posts", h["posts"] or 0, "posts (sum)"),
        ("readers", h["readers"] or 0, "readers (sum)"),
        ("mentions", h["mentions"], "posts stored (Fetch)"),
        ("snapshot-days", h["snapshot_days"], plural(h["snapshot_days"], "day in the time series", "days in the time series")),
        ("superseded", h["superseded"], "merged into another output"),
        ("nightlies", nightlies, plural(nightlies, "nightly finished", "nightlies finished")),
    ]
    out = ["<h2>Headline numbers</h2>", '<div class="cards" id="headline">']
    out += [
        f'<div class="card" id="card-{k}"><div class="value">{_e(v) or "–"}</div><div class="label">{html.escape(label)}</div></div>'
        for k, v, label in cards
    ]
    out.append("</div>")
    out.append(f'<p class="meta">First harvest {_e(h["first_harvest"]) or "–"} UTC, last harvest {_e(h["last_harvest"]) or "–"} UTC.</p>')

    out.append("<h2>Score distribution</h2>")
    out.append(
        _chart("scores", svgs, "Current outputs by Altmetric Attention Score (bins; the last is open).", "No output has a score yet.")
    )
    out.append("<h2>Accounts per source</h2>")
    out.append(_chart("sources", svgs, "Unique accounts per source, summed over current outputs (source_counts).", "No source counts yet."))

    out.append(f"<h2>Top {TOP_OUTPUTS} outputs</h2>")
    if data.top:
        headers = [
            "#",
            "DOI",
            "title",
            "journal",
            "published",
            "score",
            "accounts",
            "X/Twitter",
            "news",
            "policy",
            "Mendeley",
            "journal pct",
        ]
        body = [
            [
                str(n),
                _doi_link(r["doi"]) or f"id {_e(r['altmetric_id'])}",
                _e(r["title"]),
                _e(r["journal"]),
                _day_text(r["published_on"]),
                html.escape(score_text(float(r["score"]))),
                _e(r["accounts_count"]),
                _e(r["twitter_accounts"]),
                _e(r["news_accounts"]),
                _e(r["policy_accounts"]),
                _e(r["mendeley_readers"]),
                _e(None if r["journal_percentile"] is None else float(r["journal_percentile"])),
            ]
            for n, r in enumerate(data.top, start=1)
        ]
        out.append(
            _table(
                headers,
                body,
                numeric={0, 5, 6, 7, 8, 9, 10, 11},
                css="top-outputs",
                classes={1: "doi", 2: "title", 3: "journal", 4: "date"},
            )
        )
    else:
        out.append('<p class="empty">No output has a score yet.</p>')

    out.append("<h2>Biggest movers</h2>")
    out.append(
        _chart(
            "movers",
            svgs,
            f"Daily score (counts_snapshots) of the {MOVERS} outputs whose score changed most over the last {MOVERS_WINDOW_DAYS} days of snapshots.",
            "No output has two snapshots with different scores yet: the time series grows with every nightly.",
        )
    )
    if data.movers:
        out.append(
            _table(
                ["DOI", "title", "from", "to", "change"],
                [
                    [
                        _doi_link(m.doi) or f"id {m.altmetric_id}",
                        _e(m.title),
                        html.escape(score_text(m.points[0][1])),
                        html.escape(score_text(m.points[-1][1])),
                        html.escape(score_text(m.change, sign=True)),
                    ]
                    for m in data.movers
                ],
                numeric={2, 3, 4},
                css="movers",
                classes={0: "doi", 1: "title"},
            )
        )

    out.append("<h2>Nightly runs</h2>")
    out.append(
        _chart(
            "nightlies",
            svgs,
            "Outputs per finished nightly: new, refreshed, not found and failed (nightly_runs).",
            "No nightly has finished yet (harvester nightly).",
        )
    )
    if data.nightlies:
        body = [
            [
                _e(n["job_id"]),
                html.escape(n["night"].isoformat()),
                _e(n["status"]),
                _e(n["discovered"]),
                _e(n["new_outputs"]),
                _e(n["refreshed"]),
                _e(n["not_found"]),
                _e(n["failed"]),
            ]
            for n in reversed(data.nightlies)
        ]
        out.append(
            _table(
                ["job", "night", "status", "discovered", "new", "refreshed", "not found", "failed"],
                body,
                numeric={0, 3, 4, 5, 6, 7},
                css="nightlies",
                classes={1: "date"},
            )
        )

    out.append("<h2>Job health</h2>")
    if "jobs" in svgs or not data.jobs_by_status:
        out.append(_chart("jobs", svgs, "Jobs and their items by status (jobs, job_items).", "No job yet."))
    if data.jobs_by_status:
        counts = [
            f"{what}: " + ", ".join(f"{n:,} {html.escape(status.replace('_', ' '))}" for status, n in rows)
            for what, rows in (("Jobs", data.jobs_by_status), ("Items", data.items_by_status))
            if rows
        ]
        out.append(f'<p class="meta" id="status-counts">{". ".join(counts)}.</p>')
    if data.recent_jobs:
        body = [
            [
                _e(j["id"]),
                _e(j["name"]),
                _e(j["endpoint"]),
                _e(j["status"]),
                _e(j["total_items"]),
                _e(j["done"] or 0),
                _e(j["not_found"] or 0),
                _e(j["failed"] or 0),
                _e(j["pending"] or 0),
                _day_text(j["created_at"]),
                _e(redact(j["last_error"]) if j["last_error"] else None),
            ]
            for j in data.recent_jobs
        ]
        shown = len(data.recent_jobs)
        out.append(f"<h3>{'The last ' if shown == JOBS_SHOWN else 'The '}{shown} {plural(shown, 'job', 'jobs')}</h3>")
        out.append(
            _table(
                ["job", "name", "endpoint", "status", "items", "done", "not found", "failed", "pending", "created", "last error"],
                body,
                numeric={0, 4, 5, 6, 7, 8},
                css="jobs",
                classes={9: "date", 10: "error"},
            )
        )
    out.append("<h3>Failed items</h3>")
    if data.failed_items:
        body = [
            [
                _e(i["job_id"]),
                _e(i["input"] or i["identifier"]),
                _e(i["attempts"]),
                _e(i["http_status"]),
                _e(redact(i["last_error"] or "")),
                _day_text(i["updated_at"]),
            ]
            for i in data.failed_items
        ]
        out.append(
            _table(
                ["job", "id", "attempts", "HTTP", "error", "when"],
                body,
                numeric={0, 2, 3},
                css="failed-items",
                classes={4: "error", 5: "date"},
            )
        )
    else:
        out.append('<p class="empty" id="no-failed-items">No failed item.</p>')
    return out
