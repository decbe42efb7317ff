"""Small constructed camera-trap seasons for the ecology tests: tiny JPEGs with EXIF times, and the classify output
over them (the format `trapkit classify` writes, with taxonomy descriptions)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image

FOX = ";mammalia;carnivora;canidae;vulpes;vulpes;red fox"
DEER = ";mammalia;cetartiodactyla;cervidae;capreolus;capreolus;roe deer"
BADGER = ";mammalia;carnivora;mustelidae;meles;meles;european badger"
BLANK = ";;;;;;blank"
CLASSES = {"0": ("red fox", FOX), "1": ("roe deer", DEER), "2": ("badger", BADGER), "3": ("blank", BLANK)}
LABEL_ID = {label: k for k, (label, _) in CLASSES.items()}


def photo(path: Path, when: datetime | None, colour=(90, 110, 80)) -> None:
    """A 48x32 JPEG, with `when` as its EXIF time (DateTime, which trapkit reads without DateTimeOriginal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if when is not None:
        exif[306] = when.strftime("%Y:%m:%d %H:%M:%S")
    Image.new("RGB", (48, 32), colour).save(path, quality=80, exif=exif)


def animal(label: str, conf: float = 0.9, det_conf: float = 0.8, bbox=(0.1, 0.2, 0.3, 0.4)) -> dict:
    """A MegaDetector animal detection classified as `label` (top-1 at `conf`)."""
    other = next(k for k in LABEL_ID.values() if k != LABEL_ID[label])
    return {"category": "1", "conf": det_conf, "bbox": list(bbox),
            "classifications": [[LABEL_ID[label], conf], [other, round(1 - conf, 4)]]}


def person(conf: float = 0.9) -> dict:
    return {"category": "2", "conf": conf, "bbox": [0.5, 0.1, 0.2, 0.6]}


def vehicle(conf: float = 0.9) -> dict:
    return {"category": "3", "conf": conf, "bbox": [0.0, 0.3, 0.9, 0.5]}


def results(entries: list[dict], classifier: str = "fox-deer-v1", gap: float = 60.0) -> dict:
    """A classify output: MegaDetector 1.6 with classification categories, taxonomy and classifier metadata."""
    return {
        "info": {"format_version": "1.6", "detector": "md_v5a.0.0.pt", "classifier": classifier,
                 "classification_completion_time": "2024-06-02 10:00:00",
                 "classifier_metadata": {"trapkit_version": "0.test", "threshold": 0.2, "categories": ["animal"],
                                         "sequence_gap": gap}},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "classification_categories": {k: label for k, (label, _) in CLASSES.items()},
        "classification_category_descriptions": {k: t for k, (_, t) in CLASSES.items()},
        "images": entries,
    }


def season(root: Path, shots: list[tuple[str, datetime | None, list[dict]]], **kw) -> tuple[Path, Path]:
    """Photos under root/images (`shots`: (relative file, EXIF time, detections)) and root/results.json."""
    images = root / "images"
    entries = []
    for file, when, dets in shots:
        photo(images / file, when)
        entries.append({"file": file, "detections": dets})
    path = root / "results.json"
    path.write_text(json.dumps(results(entries, **kw)))
    return images, path


def deployments_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


T0 = datetime(2024, 5, 1, 6, 0, 0)


def burst(folder: str, start: datetime, n: int, dets_each, prefix: str = "IMG") -> list:
    """`n` photos two seconds apart in `folder` (one sequence), each with `dets_each(k)` detections."""
    return [(f"{folder}/{prefix}_{start:%m%d%H%M%S}_{k}.jpg", start + timedelta(seconds=2 * k), dets_each(k))
            for k in range(n)]
