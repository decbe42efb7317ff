"""Imports point one way, as docs/ARCHITECTURE.md draws them: stages import the core, never each other.

Read from the source with `ast`, every import included (those inside functions too, and relative ones):
- the core (`trapkit/`) imports no stage and not the app layer;
- each stage (`train/`, `export/`, `serve/`, `ecology/`) imports the core, and another stage only through
  the modules listed in `ALLOWED_MODULES` (export builds graphs from `trapkit.train.model` and asks
  `trapkit.train.runinfo` for a run's facts);
- the app layer (`app/`: the `trapkit` command, quickstart) may import everything; nothing imports it;
- nobody imports a folder by its bare name (`from train.run import ...` works only from the repository root
  and loads a second copy of the module);
- there are no import cycles between modules.
Each rule is also run on a planted tree, to show that it catches what it is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
# Folder -> the package it installs as (pyproject's package-dir).
ROOMS = {"trapkit": "trapkit", "app": "trapkit.app", "train": "trapkit.train", "export": "trapkit.export",
         "serve": "trapkit.serve", "ecology": "trapkit.ecology"}
STAGES = ("train", "export", "serve", "ecology")
ALLOWED_MODULES = {"export": ("trapkit.train.model", "trapkit.train.runinfo")}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in the file (of `package`), relative imports resolved;
    `from pkg import name` counts as `pkg.name` (a module or a name in it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _room(module: str) -> str | None:
    """The folder a dotted module lives in; None outside trapkit."""
    parts = module.split(".")
    if parts[0] != "trapkit":
        return None
    if len(parts) > 1 and parts[1] in ROOMS and parts[1] != "trapkit":
        return parts[1]
    return "trapkit"


def _module_name(path: Path, root: Path) -> tuple[str, str]:
    """(room, dotted module) of a source file."""
    rel = path.relative_to(root)
    room = rel.parts[0]
    dotted = ".".join([ROOMS[room], *rel.with_suffix("").parts[1:]])
    return room, dotted.removesuffix(".__init__")


def _sources(root: Path):
    for folder in ROOMS:
        for path in sorted((root / folder).rglob("*.py")) if (root / folder).is_dir() else ():
            room, module = _module_name(path, root)
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            yield path, room, module, _imports(path, package)


def wrong_imports(root: Path) -> list[str]:
    """Every import that breaks a rule of the module docstring (but cycles), as 'file:line: why'."""
    wrong = []
    for path, room, _, imports in _sources(root):
        rel = path.relative_to(root).as_posix()
        for line, module in imports:
            top = module.split(".")[0]
            if top in ROOMS and top != "trapkit":
                wrong.append(f"{rel}:{line} imports the bare folder name {module}: import trapkit.{module}")
                continue
            target = _room(module)
            if target is None or target == room:
                continue
            if target == "app":
                wrong.append(f"{rel}:{line} imports the app layer ({module}); nothing imports it")
            elif room == "trapkit" and target in STAGES:
                wrong.append(f"{rel}:{line}: the core imports the stage module {module}")
            elif room in STAGES and target in STAGES and not any(
                    module == m or module.startswith(m + ".") for m in ALLOWED_MODULES.get(room, ())):
                wrong.append(f"{rel}:{line}: stage {room} imports {module} of stage {target}")
    return wrong


def import_cycles(root: Path) -> list[list[str]]:
    """Cycles in the graph of trapkit modules importing each other (every import, lazy ones too)."""
    modules = {module: imports for _, _, module, imports in _sources(root)}
    graph = {}
    for module, imports in modules.items():
        targets = set()
        for _, name in imports:
            # `from pkg import name` may name a module or a function: take the longest known module.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # a package's own __init__
                targets.add(name)
        graph[module] = sorted(targets)
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_imports_point_one_way():
    assert ARCHITECTURE.is_file(), "the rules cite docs/ARCHITECTURE.md"
    wrong = wrong_imports(REPO)
    assert wrong == [], "imports that break docs/ARCHITECTURE.md's seams:\n" + "\n".join(wrong)


def test_no_import_cycles():
    cycles = import_cycles(REPO)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_folder_the_rules_name_is_installed_as_its_package():
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    for folder, package in ROOMS.items():
        if (REPO / folder).is_dir():
            assert f'"{package}" = "{folder}"' in text, f"pyproject.toml does not install {folder}/ as {package}"


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("where, text, why", [
    ("serve/a.py", "def f():\n    from trapkit.train import loop\n", "stage serve imports trapkit.train.loop"),
    ("serve/a.py", "from ..export import onnx_export\n", "stage serve imports trapkit.export.onnx_export"),
    ("export/a.py", "from trapkit.train.loop import next_round\n", "stage export imports trapkit.train.loop"),
    ("trapkit/a.py", "import trapkit.serve.classify\n", "the core imports the stage module"),
    ("train/a.py", "from train.run import Run\n", "bare folder name train.run"),
    ("serve/a.py", "import serve.classify\n", "bare folder name serve.classify"),
    ("train/a.py", "from trapkit.app.cli import main\n", "imports the app layer"),
])
def test_the_rules_catch_a_planted_import(tmp_path, where, text, why):
    root = _plant(tmp_path, {where: text, "export/b.py": "from trapkit.train.model import load_model\n"})
    found = wrong_imports(root)
    assert len(found) == 1 and why in found[0], found  # export -> train.model is allowed: only the plant is found


def test_a_planted_cycle_is_found(tmp_path):
    root = _plant(tmp_path, {"trapkit/a.py": "from trapkit import b\n", "trapkit/b.py": "def f():\n    import trapkit.c\n",
                             "trapkit/c.py": "from trapkit.a import x\n", "trapkit/d.py": "from trapkit import a\n"})
    assert import_cycles(root) == [["trapkit.a", "trapkit.b", "trapkit.c", "trapkit.a"]]
