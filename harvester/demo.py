"""`harvester demo`: the fake API on loopback, a sample harvest into ./demo.db, a summary."""

from __future__ import annotations

import dataclasses
import io

from sqlalchemy import Engine, text

from harvester import jobs, pipeline
from harvester.config import Config
from harvester.db import open_database
from harvester.fakeapi import FakeConfig, serve_in_thread
from harvester.log import hide_password
from harvester.progress import Reporter

# Real sample DOIs first (the fake serves their recorded bodies), then synthetic ones,
# with the messes a real list has: a prefix, upper case, a duplicate, a bad line.
SAMPLE_LINES = [
    "10.1038/news.2011.490",
    "doi:10.1038/480426a",
    "https://doi.org/10.1038/news.2011.498",
    "10.1038/NEWS.2011.490",
    "not a doi",
]

EXAMPLE_QUERIES = """\
Try:
  sqlite3 demo.db "select doi, round(score,1), posts_count from outputs order by score desc limit 5"
  sqlite3 demo.db "select source, sum(unique_users_count) from source_counts group by source order by 2 desc"
  sqlite3 demo.db "select status, count(*) from job_items group by status"
"""


def demo_lines(count: int) -> list[str]:
    synthetic = [f"10.5555/demo.{i:07d}" for i in range(max(0, count - len(SAMPLE_LINES)))]
    return SAMPLE_LINES + synthetic


def run_demo(config: Config, count: int, reporter: Reporter) -> tuple[pipeline.RunOutcome, str]:
    """Harvest `count` DOIs from a fake API started on loopback; return the outcome and a summary."""
    with serve_in_thread(FakeConfig()) as server:
        config = dataclasses.replace(
            config,
            # The demo never talks to the real API, whatever the config says.
            api=dataclasses.replace(config.api, url=server.url, key="demo-key", tier="commercial"),
        )
        engine = open_database(config.database.url)
        ids = io.BytesIO(("\n".join(demo_lines(count)) + "\n").encode())
        job = jobs.create_job(engine, ["-"], "doi", "counts", name="demo", stdin=ids)
        reporter.job_id = job.id
        try:
            outcome = pipeline.run(engine, job.id, config, reporter)
        finally:
            reporter.close()
    return outcome, summary(engine, config.database.url, job.id)


def summary(engine: Engine, url: str, job_id: int) -> str:
    with engine.connect() as conn:
        job = jobs.get_job(engine, job_id)
        rejects = conn.execute(
            text("select source_line, line, reason from job_rejects where job_id = :j order by line_no"), {"j": job_id}
        ).all()
        not_found = conn.execute(
            text("select count(*) from job_items where job_id = :j and status = 'not_found'"), {"j": job_id}
        ).scalar_one()
        outputs = conn.execute(text("select count(*) from outputs")).scalar_one()
        top = conn.execute(text("select doi, score, posts_count, title from outputs order by score desc limit 5")).all()
        sources = conn.execute(
            text("select source, sum(unique_users_count) from source_counts group by source order by 2 desc limit 5")
        ).all()
    # The planted messes, said out loud: a new user counts the lines and the ids, and asks where two went.
    read = job.total_items + job.duplicate_lines + job.rejected_lines
    lines = [
        f"\nThe list had {read:,} lines: {job.total_items:,} distinct DOIs were asked, "
        f"{job.duplicate_lines:,} duplicate (DOIs ignore case and doi:/https://doi.org/ prefixes), {job.rejected_lines:,} rejected:",
        *(f"  line {n}: {line!r}: {reason}" for n, line, reason in rejects),
        f'  (rejects: sqlite3 demo.db "select source_line, line, reason from job_rejects"; {not_found:,} ids answered 404:'
        " the API has no record of outputs nobody mentioned)",
        f"{outputs:,} outputs in {hide_password(url)}",
        "Top 5 by Altmetric score:",
    ]
    for doi, score, posts, title in top:
        lines.append(f"  {score:8.1f}  {posts or 0:5d} posts  {doi}  {(title or '')[:50]}")
    lines.append("Accounts per source: " + ", ".join(f"{s} {n:,}" for s, n in sources))
    lines.append(EXAMPLE_QUERIES)
    return "\n".join(lines)
