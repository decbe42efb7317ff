"""Imports point one way: stages import the core, never each other (export may import train to build graphs).

Read from the source with `ast`, every import included (those inside functions too), so the picture in
DESIGN.md stays true: trapkit/ (core) <- train/ <- export/, and serve/ and ecology/ import the core alone
(ecology reads results and serves nothing). The top
layer, trapkit/cli.py and trapkit/quickstart.py, may use every stage; nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train", "export", "serve", "ecology")
ALLOWED = {"core": set(), "train": set(), "export": {"train"}, "serve": set(), "ecology": set()}
TOP = {"trapkit/cli.py", "trapkit/quickstart.py"}


PACKAGES = {"core": "trapkit", "train": "trapkit.train", "export": "trapkit.export", "serve": "trapkit.serve",
            "ecology": "trapkit.ecology"}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in the file (of `package`), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}" if base in ("trapkit",) else base) for a in node.names]
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "trapkit":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "core"


def _sources():
    for folder in ("trapkit", *STAGES):
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path, ("core" if folder == "trapkit" else folder)


def test_stages_import_the_core_and_never_each_other():
    wrong = []
    for path, room in _sources():
        rel = path.relative_to(REPO).as_posix()
        if rel in TOP:
            continue
        for line, module in _imports(path, PACKAGES[room]):
            target = _room(module)
            if target is None or target == room or target == "core":
                continue
            if target not in ALLOWED[room]:
                wrong.append(f"{rel}:{line} imports {module}")
    assert wrong == [], "stages import the core, not each other (DESIGN.md):\n" + "\n".join(wrong)


def test_the_core_imports_no_stage_and_nothing_imports_the_top_layer():
    wrong = []
    for path, room in _sources():
        rel = path.relative_to(REPO).as_posix()
        for line, module in _imports(path, PACKAGES[room]):
            if room == "core" and rel not in TOP and _room(module) in STAGES:
                wrong.append(f"{rel}:{line} imports stage module {module}")
            if module in ("trapkit.cli", "trapkit.quickstart") and rel not in TOP:
                wrong.append(f"{rel}:{line} imports the top layer {module}")
    assert wrong == [], "\n".join(wrong)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    # The rule is only worth having if a lazy or relative import cannot slip past it.
    sample = tmp_path / "probe.py"
    sample.write_text("def f():\n    from trapkit.export import onnx_export\n    from ..train import loop\n")
    found = _imports(sample, PACKAGES["serve"])
    assert (2, "trapkit.export") in found and (3, "trapkit.train") in found
    assert _room("trapkit.export.onnx_export") == "export" and _room("trapkit.images") == "core"
