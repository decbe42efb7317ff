"""Tiny real image trees for the active-learning tests: crops and flips of the bundled camera-trap photos."""

from __future__ import annotations

import csv
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
