"""What a classify run leaves besides the JSON: a tidy CSV, a per-species summary, sorted folders.

CSV (`CSV_COLUMNS`, one row per detection and rank, so it loads straight into
pandas or R): `file, detection_index, detection_category, detection_conf, bbox,
label, conf, rank, warning, failure, schema_version`. `detection_category` is
the detector's category name (`animal`), `bbox` MegaDetector's
`[x, y, w, h]` normalised box as JSON text. An image that could not be read
(by the detector or by trapkit) has one row with its `failure` and empty
detection fields.

An image's top species (for the summary's image counts and `--sort-into`) is
the first-ranked label of its classified detection with the highest detector
confidence.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from trapkit.answers import neutralise
from trapkit.atomic import atomic_copy, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.images import ImageReadError, is_image_file, safe_join
from trapkit.video import is_video_file, split_frame
from trapkit.detections import CLASSIFICATION_FAILURE

log = logging.getLogger(__name__)

CSV_SCHEMA_VERSION = "1"
CSV_COLUMNS = ("file", "detection_index", "detection_category", "detection_conf", "bbox", "label", "conf", "rank",
               "warning", "failure", "schema_version")
EMPTY_FOLDER = "_empty"
NOT_CLASSIFIED_FOLDER = "_not_classified"  # --sort-into: entries that are not images (videos)


@dataclass
class Summary:
    """Counts for the end-of-run table. `species`: label -> [detections, images] as top-1."""

    images: int = 0
    classified_images: int = 0
    classified_detections: int = 0
    failures: int = 0
    earlier_failures: int = 0
    warnings: int = 0
    species: dict[str, list[int]] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table for the terminal, most frequent species first."""
        lines = [f"{'species':<32} {'detections':>10} {'images':>8}"]
        for label, (dets, ims) in sorted(self.species.items(), key=lambda kv: (-kv[1][0], kv[0])):
            lines.append(f"{label[:32]:<32} {dets:>10} {ims:>8}")
        lines.append(
            f"{self.classified_detections} detections classified in {self.classified_images} of {self.images} images; "
            f"{self.failures} images failed"
            + (f" (+{self.earlier_failures} failed in the detector)" if self.earlier_failures else "")
            + (f"; {self.warnings} classified with warnings" if self.warnings else "")
        )
        return "\n".join(lines)


def top_species(im: dict, labels: dict) -> str | None:
    """Label of the image's most confident classified detection, or None."""
    dets = [d for d in im.get("detections") or () if d.get("classifications")]
    if not dets:
        return None
    best = max(dets, key=lambda d: d["conf"])
    return labels[best["classifications"][0][0]]


def summarize(result: dict, done: dict) -> Summary:
    labels = result["classification_categories"]
    s = Summary(images=len(result["images"]))
    detections, images = Counter(), Counter()
    for i, im in enumerate(result["images"]):
        record = done.get(str(i))
        if record is not None and record["failure"]:
            s.failures += 1
            continue
        if im.get("failure") is not None:
            s.earlier_failures += 1
            continue
        s.warnings += bool(record and record["warnings"])
        classified = [d for d in im["detections"] if d.get("classifications")]
        if classified:
            s.classified_images += 1
            s.classified_detections += len(classified)
            detections.update(labels[d["classifications"][0][0]] for d in classified)
            images.update({labels[d["classifications"][0][0]] for d in classified})
    s.species = {label: [n, images[label]] for label, n in detections.items()}
    return s


def write_csv(path: str | Path, result: dict, done: dict) -> None:
    """The tidy CSV described in the module docstring, written atomically."""
    labels, categories = result["classification_categories"], result["detection_categories"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, im in enumerate(result["images"]):
        record = done.get(str(i))
        failure = record["failure"] if record else im.get("failure")
        if record is None and failure is None:
            continue  # nothing classified in this image
        warning = "; ".join(record["warnings"]) if record else ""
        if failure is not None:
            writer.writerow([im["file"], "", "", "", "", "", "", "", warning, failure, CSV_SCHEMA_VERSION])
            continue
        for j, det in enumerate(im["detections"]):
            for rank, (cid, conf) in enumerate(det.get("classifications") or (), 1):
                category = categories.get(det["category"], det["category"])
                # Species names go through `neutralise` (no spreadsheet formula); file names stay exact.
                writer.writerow([im["file"], j, category, det["conf"], json.dumps(det["bbox"]), neutralise(labels[cid]),
                                 conf, rank, warning, "", CSV_SCHEMA_VERSION])
    atomic_write_text(path, buf.getvalue())


def sort_into(result: dict, images_dir: str | Path, dest: str | Path, link: bool = False) -> int:
    """Copy (or symlink) each readable image into `dest/<top species>/<its relative path>`. Returns the count.

    Images (and MegaDetector's video-level entries: the video file) with no classified detection go to
    `_empty/`, entries that are neither to `_not_classified/`; failed ones and video frames (no file of
    their own) are left out.
    """
    labels = result["classification_categories"]
    dest = Path(dest)
    count = frames = 0
    for im in result["images"]:
        if im.get("failure") is not None or im.get(CLASSIFICATION_FAILURE) is not None:
            continue
        if split_frame(im["file"]) is not None:
            frames += 1
            continue
        if not is_image_file(im["file"]) and not is_video_file(im["file"]):
            folder = NOT_CLASSIFIED_FOLDER  # never classified, so not known to be empty
        else:
            folder = top_species(im, labels) or EMPTY_FOLDER
        try:
            src = safe_join(images_dir, im["file"])
            target = safe_join(dest / _safe_name(folder), im["file"])
        except ImageReadError as e:
            log.warning("not sorted: %s", e)
            continue
        if not src.is_file():
            log.warning("not sorted: %s does not exist", src)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            if target.is_symlink() or target.exists():
                target.unlink()
            try:
                os.symlink(src, target)
            except OSError as e:
                raise TrapkitError(
                    f"cannot create a link in {dest} ({e.strerror}); drop --link to copy instead"
                ) from None
        else:
            atomic_copy(src, target)
        count += 1
    if frames:
        log.info("%d video frames not sorted (they are not files); --video-out gives each video's species", frames)
    log.info("sorted %d images into %s", count, dest)
    return count


def _safe_name(label: str) -> str:
    """A class name as one folder name (no separators, not hidden)."""
    name = label.replace("/", "_").replace("\\", "_").strip() or "_unnamed"
    return "_" + name if name.startswith(".") else name
