"""Python-backend Triton model repositories for the tests and the benchmark, written by trapkit's export.

`trapkit.export.triton.write_triton_model` (what `trapkit export --triton REPO
--triton-backend python` calls) writes REPO/NAME/{config.pbtxt, labels.txt,
1/model.onnx, 1/model.py}; the helpers here only vary what a test or the
benchmark needs: dynamic batching off, the spec parameter missing, a model
that fails to load.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path


def python_repo(onnx_path: Path, repo: Path, name: str, *, max_batch_size: int = 16,
                dynamic_batching: bool = True) -> Path:
    """Add `onnx_path` to `repo` as the Python-backend model `name`; returns the model folder."""
    from trapkit.graph import read_spec
    from trapkit.export.triton import TritonSettings, write_triton_model

    settings = TritonSettings(repo=Path(repo), name=name, backend="python", max_batch_size=max_batch_size)
    folder = write_triton_model(onnx_path, read_spec(onnx_path), settings).version_dir.parent
    if not dynamic_batching:
        config = folder / "config.pbtxt"
        config.write_text(re.sub(r"dynamic_batching \{.*?\n\}\n", "", config.read_text(), flags=re.S))
    return folder


def copy_without_spec(repo: Path, name: str, new_name: str) -> Path:
    """A copy of model `name` as a repository made without trapkit would hold it: no `trapkit.spec` parameter."""
    folder = Path(repo) / new_name
    shutil.copytree(Path(repo) / name, folder)
    config = folder / "config.pbtxt"
    lines = [line for line in config.read_text().splitlines(True) if "trapkit.spec" not in line]
    config.write_text("".join(lines).replace(f'name: "{name}"', f'name: "{new_name}"', 1))
    return folder


def copy_broken(repo: Path, name: str, new_name: str, message: str) -> Path:
    """A copy of model `name` whose `initialize` raises `message`: Triton marks it UNAVAILABLE."""
    folder = copy_without_spec(repo, name, new_name)
    for version in folder.iterdir():
        if version.is_dir():
            (version / "model.py").write_text(
                f"class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError({message!r})\n")
    return folder
