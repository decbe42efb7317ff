"""Scanning what a run is made of: labelled trees (one folder per class), pools (any tree), and
MegaDetector files over them (every qualifying detection is one item).

Nothing is silently dropped: images directly in a labelled root, class folders
without images, seed images without a qualifying detection and detections
files' entries that are not images come back as problems, which `al init`
reports. What cannot be trained on honestly is refused with one line, before
anything is written: detections files whose paths do not resolve under their
tree, boxes outside the image (and, in the core, file names that are not
UTF-8 text: `trapkit.images.iter_images`, `trapkit.detections.load_detections`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trapkit.errors import TrapkitError
from trapkit.images import ImageReadError, is_image_file, iter_images, safe_join

log = logging.getLogger(__name__)

MAX_NAMED = 3
# MegaDetector rounds boxes to 4 decimals (older versions to 3): a box may reach this far past an edge.
BOX_SLACK = 0.005


@dataclass
class LabelledTree:
    items: list[tuple[str, str]]  # (path relative to root, posix; class name)
    classes: list[str]  # non-empty class folders, sorted
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Detection:
    """One item from a detections file: an image path (relative to its tree), a detection in it, its box."""

    path: str
    index: int  # into the image's `detections` list
    bbox: tuple[float, float, float, float]
    prior_guess: str = ""  # top-1 class of `trapkit classify` output (or another classifier's), if the file has it
    prior_confidence: str = ""
    conf: str = ""  # the detector's confidence, as written
    category: str = ""  # the detector's category name (animal, ...)


@dataclass
class DetectionItems:
    items: list[Detection]
    without: list[str]  # image paths with no qualifying detection (left out)
    problems: list[str] = field(default_factory=list)
    taxa: list[str] = field(default_factory=list)  # a classifier's categories above its classes (classify output)


def _named(names: list[str]) -> str:
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return ", ".join(ascii(n)[1:-1] if not n.isprintable() else n for n in names[:MAX_NAMED]) + more


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


def scan_pool(root: str | Path, option: str = "--unlabelled") -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise TrapkitError(f"{option} folder {root} does not exist; give the folder of images to label")
    paths = [p.relative_to(root).as_posix() for p in iter_images(root)]
    if not paths:
        raise TrapkitError(f"{option} folder {root} has no images (looked for {', '.join(('.jpg', '.png', '...'))})")
    return paths


def detection_items(root: str | Path, detections: str | Path, threshold: float, categories, option: str,
                    tree_option: str) -> DetectionItems:
    """Every detection of a MegaDetector file (any format from 1.3, `trapkit classify` output included) at or
    above `threshold` in `categories` (`trapkit.detections.qualifying`), with paths relative to `root`.

    Refused with one line: paths that do not resolve to files under `root` (the first few named), boxes
    outside [0, 1].
    """
    from trapkit import detections as md

    root = Path(root)
    if not root.is_dir():
        raise TrapkitError(f"{tree_option} folder {root} does not exist; give the folder {option} paths start from")
    doc = md.load_detections(detections)
    images = doc["images"]
    chosen = md.qualifying(doc, threshold, categories)
    problems = []
    not_images = [images[i]["file"] for i in chosen if not is_image_file(images[i]["file"])]
    if not_images:
        problems.append(f"{len(not_images)} entries of {detections} are not image files (videos?) and were left "
                        f"out (e.g. {_named(not_images)})")
        chosen = {i: d for i, d in chosen.items() if is_image_file(images[i]["file"])}
    unresolved, outside = [], []
    for i in sorted(chosen):
        file = images[i]["file"]
        try:
            found = safe_join(root, file).is_file()
        except ImageReadError:
            found = False
        if not found:
            unresolved.append(file)
        for j in chosen[i]:
            x, y, w, h = images[i]["detections"][j]["bbox"]
            if x < -BOX_SLACK or y < -BOX_SLACK or x + w > 1 + BOX_SLACK or y + h > 1 + BOX_SLACK:
                outside.append(f"{file} detection {j} {[x, y, w, h]}")
    if unresolved:
        raise TrapkitError(f"{len(unresolved)} of the {len(chosen)} images with detections in {detections} are not "
                           f"under {tree_option} {root} ({_named(unresolved)}); give the folder MegaDetector ran on "
                           "(its file paths start there), or restore the images")
    if outside:
        raise TrapkitError(f"{len(outside)} detection box(es) in {detections} reach outside the image "
                           f"({_named(outside)}); boxes must be [x, y, width, height] as fractions of the image "
                           "in [0, 1], as MegaDetector writes them")
    names = doc.get("classification_categories") or {}
    detector = doc.get("detection_categories") or {}
    items = []
    for i in sorted(chosen):
        im = images[i]
        for j in chosen[i]:
            det = im["detections"][j]
            guess, conf = _prior(det, names)
            items.append(Detection(PurePosixPath(im["file"].replace("\\", "/")).as_posix(), j,
                                   tuple(float(v) for v in det["bbox"]), guess, conf, repr(float(det["conf"])),
                                   str(detector.get(str(det["category"]), det["category"])).lower()))
    without = [PurePosixPath(im["file"].replace("\\", "/")).as_posix() for i, im in enumerate(images)
               if i not in chosen and is_image_file(im["file"])]
    return DetectionItems(items, without, problems, classifier_taxa(doc))


def classifier_taxa(doc: dict) -> list[str]:
    """The names `trapkit classify` gave categories above the model's classes (rollup, allow-list taxa): ids at or
    past `info.classifier_metadata.model_classes`. None in a file from another tool, or written before it."""
    n = (doc.get("info", {}).get("classifier_metadata") or {}).get("model_classes")
    if not isinstance(n, int):
        return []
    return [name for k, name in (doc.get("classification_categories") or {}).items() if k.isdigit() and int(k) >= n]


def _prior(det: dict, names: dict) -> tuple[str, str]:
    """The top classification a classifier wrote for this detection: (class name, confidence), or ('', '')."""
    classes = det.get("classifications")
    if not isinstance(classes, list) or not classes or not isinstance(classes[0], list) or len(classes[0]) < 2:
        return "", ""
    name = names.get(str(classes[0][0]))
    conf = classes[0][1]
    if not isinstance(name, str) or not isinstance(conf, (int, float)) or isinstance(conf, bool):
        return "", ""
    return name, f"{float(conf):.4f}"


def labelled_detections(root: str | Path, detections: str | Path, threshold: float, categories, option: str,
                        tree_option: str) -> tuple[LabelledTree, list[Detection]]:
    """A labelled tree's detections: each takes its image's class folder. Returns (tree, detections);
    the tree's items are the images with at least one item."""
    found = detection_items(root, detections, threshold, categories, option, tree_option)
    problems = list(found.problems)
    loose = sorted({d.path for d in found.items if "/" not in d.path})
    if loose:
        problems.append(f"{len(loose)} image(s) in {detections} are directly in {root}, not in a class folder, and "
                        f"were left out (e.g. {_named(loose)}); move them into a folder named after their class")
    kept = [d for d in found.items if "/" in d.path]
    if found.without:
        problems.append(f"{len(found.without)} image(s) in {detections} have no detection at or above the threshold "
                        f"and were left out (e.g. {_named(found.without)})")
    images = {d.path: d.path.split("/", 1)[0] for d in kept}
    classes = sorted(set(images.values()))
    if not classes:
        raise TrapkitError(f"{option} {detections} has no detections at or above the threshold in class folders "
                           f"of {root}; check --threshold and --categories, and that its paths start at {root}")
    for p in problems:
        log.warning("%s", p)
    return LabelledTree(sorted(images.items()), classes, problems), kept
