"""`trapkit camtrap-dp` and `trapkit report` on a season of 1,000,000 detections: seconds and peak memory.

The season is made once in a temporary folder: `--deployments` camera folders, images of 48x32 pixels with
EXIF times (one small JPEG whose date bytes are rewritten for each file), bursts of three photos with
`--per-image` detections each (animals of four species with taxonomy, a person now and then), and the classify
output over them (`trapkit classify`'s format: classifications, categories, taxonomy descriptions).

Each command runs as its own process, as a user runs it (the product's default path); its wall time and peak
resident memory (the process's own maximum RSS) are printed. The baseline, measured in the same run, is the
least any tool must do: a process that only parses RESULTS.json with Python's json module. Target (issue 25):
1,000,000 detections in under 60 s for the package, with memory bounded.

    .venv/bin/python bench/bench_ecology.py [--detections 1000000] [--per-image 4] [--deployments 50]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

TAXA = {"0": ("red fox", ";mammalia;carnivora;canidae;vulpes;vulpes;red fox"),
        "1": ("roe deer", ";mammalia;cetartiodactyla;cervidae;capreolus;capreolus;roe deer"),
        "2": ("badger", ";mammalia;carnivora;mustelidae;meles;meles;european badger"),
        "3": ("wild boar", ";mammalia;cetartiodactyla;suidae;sus;scrofa;wild boar")}


def _template() -> tuple[bytes, int]:
    """A tiny JPEG with an EXIF time, and the offset of the 19 date bytes to rewrite per file."""
    exif = Image.Exif()
    exif[306] = "2024:05:01 00:00:00"
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (80, 100, 70)).save(buf, "JPEG", quality=70, exif=exif)
    data = buf.getvalue()
    return data, data.index(b"2024:05:01 00:00:00")


def make_season(root: Path, detections: int, per_image: int, deployments: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data, at = _template()
    images = (detections + per_image - 1) // per_image
    start = datetime(2024, 5, 1)
    entries = []
    for i in range(images):
        dep = f"cam_{i % deployments:03d}"
        burst, k = divmod(i // deployments, 3)
        when = start + timedelta(minutes=int(burst) * 37 % (60 * 24 * 60), seconds=2 * k)
        name = f"{dep}/IMG_{i:07d}.jpg"
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = when.strftime("%Y:%m:%d %H:%M:%S").encode()
        path.write_bytes(data[:at] + stamp + data[at + 19:])
        dets = []
        species = str(rng.integers(0, 4))
        for j in range(per_image):
            x, y = rng.uniform(0, 0.7, 2)
            if rng.random() < 0.02:
                dets.append({"category": "2", "conf": 0.8, "bbox": [round(x, 4), round(y, 4), 0.2, 0.3]})
                continue
            conf = round(float(rng.uniform(0.5, 0.99)), 4)
            dets.append({"category": "1", "conf": 0.9, "bbox": [round(x, 4), round(y, 4), 0.2, 0.2],
                         "classifications": [[species, conf], [str((int(species) + 1) % 4), round(1 - conf, 4)]]})
        entries.append({"file": name, "detections": dets})
    doc = {"info": {"format_version": "1.6", "detector": "md_v5a.0.0.pt", "classifier": "bench-model",
                    "classification_completion_time": "2024-07-01 10:00:00",
                    "classifier_metadata": {"threshold": 0.1, "sequence_gap": 60, "trapkit_version": "bench"}},
           "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
           "classification_categories": {k: v[0] for k, v in TAXA.items()},
           "classification_category_descriptions": {k: v[1] for k, v in TAXA.items()}, "images": entries}
    (root / "results.json").write_text(json.dumps(doc))
    rows = ["deploymentID,latitude,longitude,deploymentStart,deploymentEnd"]
    rows += [f"cam_{d:03d},{50 + d / 100:.4f},{4 + d / 100:.4f},2024-04-30T00:00:00,2024-07-01T00:00:00"
             for d in range(deployments)]
    (root / "deployments.csv").write_text("\n".join(rows) + "\n")


def measure(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detections", type=int, default=1_000_000)
    parser.add_argument("--per-image", type=int, default=4)
    parser.add_argument("--deployments", type=int, default=50)
    a = parser.parse_args()
    trapkit = str(Path(sys.executable).with_name("trapkit"))
    with tempfile.TemporaryDirectory(prefix="bench_ecology_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_season(root, a.detections, a.per_image, a.deployments)
        images = sum(1 for _ in (root / "images").rglob("*.jpg"))
        size = (root / "results.json").stat().st_size / 2**20
        print(f"season: {a.detections:,} detections in {images:,} images, {a.deployments} deployments, "
              f"RESULTS {size:.0f} MiB (made in {time.perf_counter() - t:.0f} s); load {_load()}")
        common = ["--images", str(root / "images"), "--deployments", str(root / "deployments.csv"),
                  "--timezone", "+01:00"]
        rows = [("baseline: json.load(RESULTS)", measure([sys.executable, "-c", "import json,sys; "
                                                          "json.load(open(sys.argv[1]))", str(root / "results.json")])),
                ("trapkit camtrap-dp", measure([trapkit, "camtrap-dp", str(root / "results.json"), *common,
                                                "--out", str(root / "pkg")])),
                ("trapkit report (RESULTS)", measure([trapkit, "report", str(root / "results.json"), *common,
                                                      "--out", str(root / "rep")])),
                ("trapkit report (package)", measure([trapkit, "report", str(root / "pkg"), "--out",
                                                      str(root / "rep2")]))]
        base_s, base_m = rows[0][1]
        print(f"{'what':<30} {'seconds':>8} {'peak MiB':>9} {'x baseline s':>13} {'x baseline MiB':>15}")
        for what, (s, m) in rows:
            print(f"{what:<30} {s:8.1f} {m:9.0f} {s / base_s:13.1f} {m / base_m:15.1f}")
        print(f"load after: {_load()}")


def _load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


if __name__ == "__main__":
    main()
