"""An output whose altmetric id changes upstream (records merged): followed, not duplicated.

The fake, with --evolve, gives a DOI containing `merged` a new altmetric id every day.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.subproc import query
from tests.test_nightly import NIGHT, SEED_KEY, World, make_world

DOI = "10.5555/merged.0001"


def test_a_doi_whose_altmetric_id_changes_keeps_one_current_row_and_continuous_snapshots(tmp_path: Path) -> None:
    for world in make_world(tmp_path):
        _two_nights(world)


def _two_nights(world: World) -> None:
    db = world.db()
    ids = world.tmp / "mine.txt"
    ids.write_text(f"{DOI}\n10.5555/plain.0001\n")
    code, _, err = world.run(NIGHT - timedelta(hours=24), "harvest", "--no-progress", str(ids), ALTMETRIC_API_KEY=SEED_KEY)
    assert code == 0, err
    [(first_id,)] = query(db, f"select altmetric_id from outputs where doi = '{DOI}'")
    for night in (NIGHT, NIGHT + timedelta(days=1)):
        code, _, err = world.run(night, "nightly", "--no-progress")
        assert code == 0, err
    [(current,)] = query(db, f"select altmetric_id from outputs where doi = '{DOI}' and superseded_by is null")
    assert current != first_id
    # One current row; the replaced ones point to it, and the aliases are one hop long.
    assert query(db, f"select count(*) from outputs where doi = '{DOI}' and superseded_by is null") == [(1,)]
    old = query(db, f"select altmetric_id, superseded_by from outputs where doi = '{DOI}' and superseded_by is not null order by 1")
    assert len(old) == 2 and {s for _, s in old} == {current}
    aliases = query(db, "select old_altmetric_id, new_altmetric_id, via from output_aliases order by 1")
    assert aliases == sorted((o, current, f"doi:{DOI}") for o, _ in old)
    # The DOI names the current output, and so do the identifiers the old ones had.
    assert query(db, f"select altmetric_id from identifiers where scheme = 'doi' and value = '{DOI}'") == [(current,)]
    assert query(db, f"select count(*) from identifiers where altmetric_id in ({first_id})") == [(0,)]
    # Snapshots are continuous through the aliases: one a day, three days.
    days = query(
        db,
        f"""select s.harvested_on from counts_snapshots s
            left join output_aliases a on a.old_altmetric_id = s.altmetric_id
            where coalesce(a.new_altmetric_id, s.altmetric_id) = {current} order by 1""",
    )
    assert len(days) == 3
    # Not new to the database: the nightly did not report it as a new output.
    assert query(db, "select sum(new_outputs) from nightly_runs")[0][0] == query(
        db, "select count(distinct altmetric_id) from citation_activity"
    )[0][0]
    # A superseded output is never due again: the third night asks for the DOI once, and never for an old id.
    before = dict(world.server.stats.per_path)
    code, _, err = world.run(NIGHT + timedelta(days=2), "nightly", "--no-progress")
    assert code == 0, err
    asked = {p: n - before.get(p, 0) for p, n in world.server.stats.per_path.items() if n > before.get(p, 0)}
    assert asked[f"/v1/doi/{DOI}"] == 1
    assert not any(p.startswith("/v1/id/") and p.endswith(tuple(str(o) for o, _ in old)) for p in asked)
