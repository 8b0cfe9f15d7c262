"""A plain (non-editable) install carries its migrations and the fake API's data."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from harvester.db import head_revision
from tests.conftest import ROOT


def test_wheel_installs_and_works_outside_the_checkout(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "harvester/migrations/env.py",
        "harvester/migrations/script.py.mako",
        *(f"harvester/migrations/versions/{p.name}" for p in (ROOT / "migrations" / "versions").glob("0*.py")),
        "harvester/data/counts_researchhub-pyliteral_10.1038-news.2011.490.json",
    ):
        assert needed in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    # -S: no site processing, so the editable install of the checkout is invisible;
    # the dependencies come from this interpreter's site-packages, after the wheel.
    env = {"PYTHONPATH": f"{unpacked}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    script = (
        "import harvester, sys; assert harvester.__file__.startswith(sys.argv[1]), harvester.__file__\n"
        "from harvester.cli import main; sys.argv = ['harvester', '--database', 'sqlite:///x.db', 'db', 'upgrade']; main()"
    )
    result = subprocess.run([sys.executable, "-S", "-c", script, str(unpacked)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"database at revision {head_revision()}" in result.stdout
    fake = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "from harvester.fakeapi import counts_body; print(counts_body('doi', '10.1038/news.2011.490')['readers'])",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert fake.returncode == 0, fake.stderr
    assert "'mendeley': '9'" in fake.stdout
