"""The writer process's queues never hold up the exit of the process that ran it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from harvester.endpoints import by_kind
from harvester.writer import WriterProcess

SCRIPT = textwrap.dedent(
    """
    import sys
    from harvester.db import open_database
    from harvester.endpoints import by_kind
    from harvester.writer import WriterProcess

    url = sys.argv[1]
    open_database(url).dispose()
    writer = WriterProcess(url, 1, by_kind("counts").for_params(None), "runner-1")
    writer.start()
    # What a second Ctrl-C can leave: the writer told to stop first, then a batch sent by a
    # send() that the cancel could not stop, bigger than a pipe holds, that nobody will read.
    writer._inbox.put(None)
    writer._process.join(timeout=60)
    assert not writer._process.is_alive()
    writer._inbox.put([("x" * 300_000,)])
    writer.close()
    print("closed")
    """
)


def test_a_batch_left_unread_does_not_hold_up_the_exit(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path / 'h.db'}"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == "closed", run.stderr


def test_a_writer_never_started_closes_quietly(tmp_path: Path) -> None:
    # A run with nothing to claim (a nightly's empty step) never starts its writer, and closes it all the same.
    writer = WriterProcess(f"sqlite:///{tmp_path / 'h.db'}", 1, by_kind("counts").for_params(None), "runner-1")
    writer.close()
