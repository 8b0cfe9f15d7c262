"""What docs/architecture.md says about the code's shape, checked against the code itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from harvester import endpoints
from harvester.vocabulary import ENDPOINTS, ID_ENDPOINTS, JobKind

ROOT = Path(__file__).resolve().parents[1]

# A spawned writer under the `harvester` console script: the child re-imports the parent's main
# module (the console script, so harvester.cli and everything it imports) before it runs the
# writer; `import harvester.store` alone is what the writer itself needs.
_PROBE = """
import multiprocessing, sys
def modules(queue):
    queue.put(sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "click", "harvester")))
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=modules, args=(queue,))
    process.start()
    print(" ".join(queue.get(timeout=60)))
    process.join()
"""


def test_the_writer_needs_no_http_code_but_a_spawned_child_reimports_the_entry_module(tmp_path: Path) -> None:
    """docs/architecture.md says both: the writer's own modules import no HTTP code, and under the
    console script a spawned child loads what the entry module imports (aiohttp among them)."""
    alone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, harvester.store, harvester.writer; print(' '.join(m for m in sys.modules if m.startswith('aiohttp')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert alone.stdout.strip() == ""
    # The console script's own shape: a file that imports harvester.cli (pip writes `from harvester.cli import main`).
    entry = tmp_path / "harvester"
    entry.write_text("import sys\nfrom harvester.cli import main\n" + _PROBE)
    spawned = subprocess.run([sys.executable, str(entry)], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(spawned.stdout.split())
    assert "aiohttp" in loaded and "harvester.cli" in loaded


def test_no_module_but_endpoints_compares_endpoint_names() -> None:
    """Adding an endpoint is adding a class in endpoints.py: nothing else branches on a name."""
    kinds = "|".join(k.value for k in JobKind)
    compare = re.compile(rf"""(==|!=)\s*["']({kinds})["']|["']({kinds})["']\s*(==|!=)|in_?\(\s*\(?["']({kinds})["']""")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "harvester").rglob("*.py"))
        if path.name not in ("endpoints.py", "vocabulary.py") and "fakeapi" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if compare.search(line)
    ]
    assert offenders == []


def test_the_registry_holds_every_endpoint_kind() -> None:
    assert set(endpoints.REGISTRY) == {JobKind(k) for k in ENDPOINTS}
    assert {k.value for k, cls in endpoints.REGISTRY.items() if cls.by_id} == set(ID_ENDPOINTS)


def _imports() -> dict[str, set[str]]:
    """harvester's modules and the harvester modules each imports, at the top or inside a function
    (a lazy import still ties two modules together); the fake API counts as one module."""
    import ast

    def name(module: str) -> str:
        parts = module.split(".")
        return "fakeapi" if parts[1:2] == ["fakeapi"] else ".".join(parts[1:2])

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "harvester").rglob("*.py")):
        module = name("harvester." + ".".join(path.relative_to(ROOT / "harvester").with_suffix("").parts))
        if module in ("__init__", "__main__", ""):
            continue
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harvester"):
                targets = [f"{node.module}.{a.name}" for a in node.names] if node.module == "harvester" else [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("harvester.")]
            else:
                continue
            found.update(t for t in (name(x) for x in targets) if t and t != module)
    return graph


def test_no_two_modules_import_each_other_even_lazily() -> None:
    """docs/architecture.md: no circles. A lazy import inside a function hides a circle from Python,
    not from a reader, so those count too."""
    graph = _imports()
    assert {"changefeed", "nightly", "endpoints", "store", "pipeline"} <= graph.keys()

    def circle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            here, path = stack.pop()
            for nxt in sorted(graph.get(here, ())):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    circles = [c for m in sorted(graph) if (c := circle_from(m)) is not None]
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)
