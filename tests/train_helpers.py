"""Tiny real image trees for the active-learning tests: crops and flips of the bundled camera-trap photos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SAMPLES = Path(__file__).resolve().parents[1] / "trapkit" / "data" / "camera-traps"
PHOTOS = {"bear": "american_black_bear.jpg", "cattle": "domestic_cattle.jpg", "dog": "domestic_dog.jpg",
          "elephant": "african_elephants.jpg", "ocelot": "ocelot.jpg"}
# Flags every test run uses: a tiny random backbone at 32 px, so a round takes seconds.
FAST = ["--backbone", "test_efficientnet", "--weights", "none", "--input-size", "32", "--feat-dim", "16",
        "--finetune-epochs", "1", "--head-max-epochs", "30"]


def _variants(photo: str, count: int, rng: np.random.Generator, size: int = 64):
    img = Image.open(SAMPLES / photo).convert("RGB")
    img.draft("RGB", (256, 256))
    img = img.resize((256, int(256 * img.height / img.width)))
    for _ in range(count):
        w = int(rng.integers(120, 200))
        h = min(img.height, w)
        x, y = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
        crop = img.crop((x, y, x + w, y + h)).resize((size, size))
        yield ImageOps.mirror(crop) if rng.random() < 0.5 else crop


def make_trees(root: Path, classes=("bear", "cattle", "dog"), seed_per_class=4, val_per_class=3,
               pool_per_class=8, seed: int = 0) -> dict:
    """labelled/<class>/*.jpg, validation/<class>/*.jpg, pool/<a|b>/*.jpg and an oracle CSV for the pool."""
    rng = np.random.default_rng(seed)
    truth = {}
    for c in classes:
        for split, n in (("labelled", seed_per_class), ("validation", val_per_class)):
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(_variants(PHOTOS[c], n, rng)):
                im.save(folder / f"{c}_{i}.jpg", quality=85)
        for i, im in enumerate(_variants(PHOTOS[c], pool_per_class, rng)):
            sub = "cam_a" if i % 2 else "cam_b/day 1"
            (root / "pool" / sub).mkdir(parents=True, exist_ok=True)
            name = f"img_{c[:2]}{i:03d}.jpg"
            im.save(root / "pool" / sub / name, quality=85)
            truth[f"{sub}/{name}"] = c
    oracle = root / "oracle.csv"
    write_answers(oracle, truth)
    return {"labelled": root / "labelled", "validation": root / "validation", "pool": root / "pool",
            "oracle": oracle, "truth": truth}


def write_answers(path: Path, answers: dict[str, str], backslash: bool = False, bom: bool = False,
                  crlf: bool = False, extra: bool = False, reorder: bool = False, selected: set | None = None):
    """An answers CSV in Timelapse's shape, with optional Excel/Windows dirt."""
    header = ["File", "RelativePath", "Selected", "Species"]
    if extra:
        header = ["DateTime", *header, "Notes"]
    if reorder:
        header = header[::-1]
    rows = []
    for p, species in answers.items():
        folder, _, name = p.rpartition("/")
        if backslash:
            folder = folder.replace("/", "\\")
        values = {"File": name, "RelativePath": folder, "Species": species, "DateTime": "2024-05-01 10:00:00",
                  "Notes": "seen, maybe", "Selected": "true" if selected is None or p in selected else "false"}
        rows.append([values[h] for h in header])
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    return path


# -- camera-trap-like frames with MegaDetector detections ---------------------------------------

BLANKS = ("blank.jpg", "blank2.jpg", "blank3.jpg")
FRAME = (200, 150)  # (w, h) of a built frame
CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}


def _blank_frames(rng: np.random.Generator, count: int):
    """`count` FRAME-sized pieces of the bundled blank camera-trap photos."""
    sources = []
    for name in BLANKS:
        img = Image.open(SAMPLES / name).convert("RGB")
        img.draft("RGB", (800, 600))
        sources.append(img.resize((800, 600)))
    for _ in range(count):
        src = sources[int(rng.integers(len(sources)))]
        w = int(rng.integers(FRAME[0], 500))
        h = w * FRAME[1] // FRAME[0]
        x, y = int(rng.integers(0, 800 - w)), int(rng.integers(0, 600 - h))
        yield src.crop((x, y, x + w, y + h)).resize(FRAME)


def detection_doc(entries: list[dict]) -> dict:
    return {"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"}, "detection_categories": CATEGORIES,
            "images": entries}


def _frame(rng, blank: Image.Image, cls: str, animals: int, when: str | None, path: Path) -> list[dict]:
    """Paste `animals` pictures of `cls` into `blank`, save it at `path` (with an EXIF time), return detections."""
    dets = []
    for k, animal in enumerate(_variants(PHOTOS[cls], animals, rng, size=int(rng.integers(36, 56)))):
        x = int(rng.integers(0, FRAME[0] - animal.width)) if animals == 1 else \
            (k * FRAME[0] // animals + int(rng.integers(0, FRAME[0] // animals - animal.width)))
        y = int(rng.integers(0, FRAME[1] - animal.height))
        blank.paste(animal, (x, y))
        dets.append({"category": "1", "conf": round(float(rng.uniform(0.6, 0.97)), 3),
                     "bbox": [x / FRAME[0], y / FRAME[1], animal.width / FRAME[0], animal.height / FRAME[1]]})
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if when:
        exif[306] = when  # DateTime, which trapkit reads when DateTimeOriginal is absent
    blank.save(path, quality=90, exif=exif)
    return dets


def make_detection_trees(root: Path, classes=("bear", "cattle", "dog"), seed_per_class=3, val_per_class=2,
                         bursts_per_class=2, burst=3, seed: int = 0) -> dict:
    """Camera-trap-like frames (the bundled photos' animals pasted into their blank photos) with MegaDetector JSON.

    labelled/<class>/*.jpg + seed.json, validation/<class>/*.jpg + val.json, and a pool of bursts
    (pool/cam_a, pool/cam_b: `burst` frames 2 s apart, bursts 10 minutes apart; every third frame holds two
    animals) + pool.json, with a frame whose only detection is below 0.1, one with only a person, and an
    empty frame. Oracles: oracle.csv (per image), oracle_detections.csv (per detection).
    """
    rng = np.random.default_rng(seed)
    blanks = _blank_frames(rng, 400)
    out: dict = {"truth": {}, "detections": {}}
    for split, per_class, name in (("labelled", seed_per_class, "seed.json"), ("validation", val_per_class, "val.json")):
        entries = []
        for c in classes:
            for i in range(per_class):
                rel = f"{c}/{c}_{i}.jpg"
                entries.append({"file": rel, "detections": _frame(rng, next(blanks), c, 1, None, root / split / rel)})
        (root / name).write_text(json.dumps(detection_doc(entries)))
        out[split], out[name.split(".")[0]] = root / split, root / name
    entries, minute = [], 0
    for b in range(bursts_per_class):
        for c in classes:
            cam = "cam_a" if (b + len(c)) % 2 else "cam_b"
            minute += 10
            for k in range(burst):
                rel = f"{cam}/{c}_{b}_{k}.jpg"
                when = f"2024:05:01 {8 + minute // 60:02d}:{minute % 60:02d}:{2 * k:02d}"
                dets = _frame(rng, next(blanks), c, 2 if k == 2 else 1, when, root / "pool" / rel)
                entries.append({"file": rel, "detections": dets})
                out["truth"][rel] = c
                out["detections"][rel] = len(dets)
    low = _frame(rng, next(blanks), "dog", 1, None, root / "pool" / "cam_a" / "faint.jpg")
    low[0]["conf"] = 0.05
    person = _frame(rng, next(blanks), "dog", 1, None, root / "pool" / "cam_b" / "person.jpg")
    person[0]["category"] = "2"
    _frame(rng, next(blanks), "dog", 0, None, root / "pool" / "cam_b" / "empty.jpg")
    entries += [{"file": "cam_a/faint.jpg", "detections": low}, {"file": "cam_b/person.jpg", "detections": person},
                {"file": "cam_b/empty.jpg", "detections": []}]
    (root / "pool.json").write_text(json.dumps(detection_doc(entries)))
    out["pool"], out["pool_md"] = root / "pool", root / "pool.json"
    out["oracle"] = write_answers(root / "oracle.csv", out["truth"])
    rows = [["File", "RelativePath", "Detection", "Species"]]
    for rel, c in out["truth"].items():
        folder, _, name = rel.rpartition("/")
        rows += [[name, folder, str(j), c] for j in range(out["detections"][rel])]
    with open(root / "oracle_detections.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out["oracle_detections"] = root / "oracle_detections.csv"
    return out


def detection_flags(trees: dict, batch: int = 4) -> list[str]:
    return ["--labelled", str(trees["labelled"]), "--seed-detections", str(trees["seed"]),
            "--validation", str(trees["validation"]), "--validation-detections", str(trees["val"]),
            "--unlabelled", str(trees["pool"]), "--detections", str(trees["pool_md"]), "--batch", str(batch), *FAST]
