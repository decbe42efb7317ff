"""A Python environment with only what AddaxAI's `pytorch` environment has that a classifier can use: no trapkit,
no onnxruntime. Built in seconds from the test environment's own installs, so CI needs no download.

AddaxAI's env-pytorch (backend/app/ml/envs/pytorch/*/environment.yml) installs torch, torchvision, timm
(which brings safetensors), NumPy, OpenCV and Pillow, among packages a trapkit model has no use for
(ultralytics, transformers, onnx2torch). `build(where)` makes a venv without pip and links into its
site-packages the files of those distributions and of everything they require, nothing else.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import venv
from pathlib import Path

ADDAXAI_PYTORCH = ("torch", "torchvision", "timm", "safetensors", "numpy", "pillow", "opencv-python-headless")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names=ADDAXAI_PYTORCH) -> dict[str, metadata.Distribution]:
    """The installed distributions `names` need, by normalised name (extras left out)."""
    from packaging.requirements import Requirement

    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _key(todo.pop())
        if name in found:
            continue
        try:
            found[name] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # required on paper, not installed: the package imports without it
            continue
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def build(where: Path) -> Path:
    """The environment's python: a venv at `where` whose site-packages links the closure's files alone."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    linked = set()
    for dist in closure().values():
        for file in dist.files or ():
            top = file.parts[0]
            if top in linked or top == ".." or top == "__pycache__" or top.endswith(".pth"):
                continue
            source = Path(dist.locate_file(top))
            if source.exists():
                (site / top).symlink_to(source)
                linked.add(top)
    return python
