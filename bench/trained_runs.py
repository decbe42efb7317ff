"""Small real datasets and models trained on them through `trapkit al`, for the int8 and classify benchmarks.

- `digits`: scikit-learn's 8x8 digits as PNG class folders (issue 15's case): a seed of 8 per class,
  400 validation images, the other 1,317 in the pool.
- `crops`: camera-trap-like crops. Fashion-MNIST items (Debian's `dataset-fashion-mnist`) pasted, with
  a soft mask and an animal-like tint, onto seeded random squares of the bundled blank camera-trap
  photos (what MegaDetector crops look like: a small thing on real vegetation, soil and light).
  A seed of 10 per class, 800 in the pool, 300 validation crops (from the Fashion-MNIST test split).

`train_run(kind, workdir)` builds the images and runs `trapkit al simulate` on them (init, then rounds
of 100 answered from the true labels until `budget` pool labels): the model a user would have after
a few rounds, default backbone and settings. Everything is cached in `workdir`.

    .venv/bin/python bench/trained_runs.py --workdir /tmp/trapkit-runs    # builds and trains both
"""

from __future__ import annotations

import argparse
import gzip
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
BLANKS = [REPO / "trapkit" / "data" / "camera-traps" / name for name in ("blank.jpg", "blank2.jpg", "blank3.jpg")]
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
KINDS = ("digits", "crops")
BUDGET = {"digits": 200, "crops": 300}


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write_split(root: Path, split: str, images, labels: list[str], oracle: list[str]) -> None:
    for k, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / (label if split != "pool" else "")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{split}{k:05d}" + (".png" if image.mode == "L" else ".jpg")
        image.save(folder / name, **({"quality": 88} if image.mode == "RGB" else {}))
        if split == "pool":
            oracle.append(f"{name},,{label}")


def build_digits(root: Path) -> Path:
    """root/{seed,validation,pool}/ and root/oracle.csv (File, RelativePath, Species) for the pool."""
    from sklearn.datasets import load_digits

    if (root / "oracle.csv").is_file():
        return root
    d = load_digits()
    pixels = (d.images * (255 / 16)).round().astype(np.uint8)  # (1797, 8, 8)
    order = np.random.default_rng(0).permutation(len(d.target))
    seed = np.concatenate([order[d.target[order] == c][:8] for c in range(10)])
    rest = order[~np.isin(order, seed)]
    split = {"seed": seed, "validation": rest[:400], "pool": rest[400:]}
    oracle = ["File,RelativePath,Species"]
    for name, rows in split.items():
        _write_split(root, name, [Image.fromarray(pixels[i], "L") for i in rows],
                     [f"digit{d.target[i]}" for i in rows], oracle)
    (root / "oracle.csv").write_text("\n".join(oracle) + "\n")
    return root


def paste_item(background: Image.Image, item: np.ndarray, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """One camera-trap-like crop: a (28, 28) grey item tinted and pasted on a random square of `background`."""
    w, h = background.size
    side = int(rng.uniform(0.12, 0.4) * min(w, h))
    x, y = int(rng.uniform(0, w - side)), int(rng.uniform(0, h - side))
    crop = background.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
    scale = rng.uniform(0.55, 0.95)
    px = max(8, int(size * scale))
    grey = Image.fromarray(item, "L").resize((px, px), Image.BILINEAR)
    if rng.random() < 0.5:
        grey = grey.transpose(Image.FLIP_LEFT_RIGHT)
    v = np.asarray(grey, np.float32) / 255.0  # (px, px) in [0, 1]
    # Animal-like coats: a luminance times a brown-to-grey hue (red >= green >= blue).
    tint = rng.uniform(70, 210) * np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.45, 0.9)])
    shade = rng.uniform(0.5, 1.0)  # the light on the animal
    colour = (tint[None, None, :] * (0.35 + 0.65 * v[..., None]) * shade).clip(0, 255).astype(np.uint8)
    alpha = Image.fromarray((np.clip(v * 4.0, 0, 1) * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(1))
    ox, oy = int(rng.uniform(0, size - px)), int(rng.uniform(0, size - px))
    crop.paste(Image.fromarray(colour, "RGB"), (ox, oy), alpha)
    noise = rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(crop, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")


def build_crops(root: Path, n_seed_per_class: int = 10, n_pool: int = 800, n_val: int = 300) -> Path:
    if (root / "oracle.csv").is_file():
        return root
    if not FASHION.is_dir():
        raise SystemExit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    train_x, train_y = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    test_x, test_y = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(15)
    backgrounds = [Image.open(p).convert("RGB") for p in BLANKS]
    order = rng.permutation(len(train_y))
    seed = np.concatenate([order[train_y[order] == c][:n_seed_per_class] for c in range(10)])
    pool = order[~np.isin(order, seed)][:n_pool]
    val = rng.choice(len(test_y), n_val, replace=False)
    oracle = ["File,RelativePath,Species"]
    for name, xs, ys in (("seed", train_x[seed], train_y[seed]), ("validation", test_x[val], test_y[val]),
                         ("pool", train_x[pool], train_y[pool])):
        images = [paste_item(backgrounds[k % len(backgrounds)], item, rng) for k, item in enumerate(xs)]
        _write_split(root, name, images, [FASHION_CLASSES[c] for c in ys], oracle)
    (root / "oracle.csv").write_text("\n".join(oracle) + "\n")
    return root


def train_run(kind: str, workdir: Path, budget: int | None = None, weights: str | None = None) -> Path:
    """The run folder of `kind` trained through `trapkit al simulate` (cached in workdir/run-KIND)."""
    from trapkit.train.loop import simulate
    from trapkit.train.settings import resolve

    data = (build_digits if kind == "digits" else build_crops)(workdir / f"data-{kind}")
    run = workdir / (f"run-{kind}" + (f"-{weights}" if weights else ""))
    if (run / "curve.csv").is_file():
        return run
    settings = resolve(None, {"labelled": str(data / "seed"), "unlabelled": str(data / "pool"),
                              "validation": str(data / "validation"), "weights": weights})
    curve = simulate(run, settings, data / "oracle.csv", BUDGET[kind] if budget is None else budget)
    logging.getLogger(__name__).info("%s: %s", kind, ", ".join(f"{r['labels']} labels {r['accuracy']:.3f}"
                                                               for r in curve))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/trapkit-runs"))
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for kind in args.kinds.split(","):
        print(f"{kind}: {train_run(kind, args.workdir)}")


if __name__ == "__main__":
    main()
