"""Scanning image trees: a labelled tree (one folder per class) and a pool (any tree).

Nothing is silently dropped: images directly in a labelled root and class
folders without images come back as problems, which `al init` reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trapkit.errors import TrapkitError
from trapkit.images import is_image_file, iter_images

log = logging.getLogger(__name__)


@dataclass
class LabelledTree:
    items: list[tuple[str, str]]  # (path relative to root, posix; class name)
    classes: list[str]  # non-empty class folders, sorted
    problems: list[str] = field(default_factory=list)


def scan_labelled(root: str | Path, option: str = "--labelled") -> LabelledTree:
    root = Path(root)
    if not root.is_dir():
        raise TrapkitError(f"{option} folder {root} does not exist; give a folder with one sub-folder per class")
    problems = []
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and is_image_file(p))
    if loose:
        problems.append(
            f"{len(loose)} image(s) directly in {root} are not in a class folder and were left out "
            f"(e.g. {', '.join(loose[:3])}); move them into a folder named after their class"
        )
    items: list[tuple[str, str]] = []
    classes = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = iter_images(folder)
        if not images:
            problems.append(f"class folder {folder} has no images and was left out")
            continue
        classes.append(folder.name)
        items += [(p.relative_to(root).as_posix(), folder.name) for p in images]
    if not classes:
        raise TrapkitError(
            f"{option} folder {root} has no class folders with images; put each class's images in a sub-folder "
            "named after the class"
        )
    for p in problems:
        log.warning("%s", p)
    return LabelledTree(items, classes, problems)


def scan_pool(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise TrapkitError(f"--unlabelled folder {root} does not exist; give the folder of images to label")
    paths = [p.relative_to(root).as_posix() for p in iter_images(root)]
    if not paths:
        raise TrapkitError(f"--unlabelled folder {root} has no images (looked for {', '.join(('.jpg', '.png', '...'))})")
    return paths
