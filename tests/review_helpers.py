"""A small real classify result to review, and a real browser to review it in.

`make_review_case` copies a few bundled photos (shrunk, so thumbnails cut fast),
adds a burst of three photos in one folder with EXIF capture times 10 s apart
(one sequence for `e`) and one an hour later, writes MegaDetector detections
for them and classifies them with a real model through `trapkit classify`.
The tiny random-weight test model calls nearly everything one species, so the
helper then moves a different class to the top of each detection's list (its
confidence with it): the page gets several species groups, and the file stays
a valid classify result.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

from PIL import Image

from trapkit.app.cli import main
from web_helpers import only_loopback

SAMPLES = Path(__file__).resolve().parents[1] / "trapkit" / "data" / "camera-traps"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHOTOS = ("african_elephants.jpg", "domestic_cattle.jpg", "ocelot.jpg", "domestic_dog.jpg")
BURST = ("burst_1.jpg", "burst_2.jpg", "burst_3.jpg", "later.jpg")
BURST_TIMES = ("2024:05:01 10:00:00", "2024:05:01 10:00:10", "2024:05:01 10:00:20", "2024:05:01 11:00:00")
DATETIME_TAG = 306  # EXIF DateTime
SHRUNK = 640


def _shrunk_copy(src: Path, dst: Path, taken: str | None = None) -> None:
    img = Image.open(src)
    exif = img.getexif()
    img = img.convert("RGB")
    img.thumbnail((SHRUNK, SHRUNK))
    if taken:  # only this time: the original's DateTimeOriginal would win over it
        exif = Image.Exif()
        exif[DATETIME_TAG] = taken
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, quality=88, exif=exif)


def make_review_case(root: Path, onnx: Path, one_per_image: bool = False) -> dict:
    """images/, detections.json, results.json and features.parquet (real `trapkit classify` output) under `root`.

    `one_per_image`: keep only each image's most confident detection (so image-level and per-detection
    answers say the same thing).
    """
    images = root / "images"
    md = json.loads((SAMPLES / "md_v5a_detections.json").read_text())
    by_file = {im["file"]: im for im in md["images"]}
    entries = []
    for name in PHOTOS:
        _shrunk_copy(SAMPLES / name, images / "station A" / name)
        entries.append({**by_file[name], "file": f"station A/{name}"})
    for name, taken in zip(BURST, BURST_TIMES):
        _shrunk_copy(SAMPLES / "domestic_cattle.jpg", images / "cam_b" / name, taken)
        entries.append({"file": f"cam_b/{name}", "detections": by_file["domestic_cattle.jpg"]["detections"][:2]})
    if one_per_image:
        entries = [{**e, "detections": sorted(e["detections"], key=lambda d: -d["conf"])[:1]} for e in entries]
    md["images"] = entries
    detections = root / "detections.json"
    detections.write_text(json.dumps(md))
    results, features = root / "results.json", root / "features.parquet"
    assert main(["classify", str(images), "--model", str(onnx), "--detections", str(detections),
                 "--out", str(results), "--features", str(features), "--workers", "1"]) == 0
    doc = json.loads(results.read_text())
    n = 0
    for im in doc["images"]:
        for det in im["detections"] or ():
            if det.get("classifications"):
                top = det["classifications"]
                pick = next((c for c in top if c[0] == str(n % len(top))), top[0])
                det["classifications"] = [pick, *(c for c in top if c is not pick)]
                n += 1
    results.write_text(json.dumps(doc))
    return {"images": images, "detections": detections, "results": results, "features": features}


def read_rows(path: Path) -> dict[tuple[str, str, str], str]:
    """ANSWERS.csv as {(File, RelativePath, Detection): Species}."""
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        return {(r["File"], r["RelativePath"], r["Detection"]): r["Species"] for r in csv.DictReader(f)}


def row_key(item_key: str) -> tuple[str, str, str]:
    """'cam_b/burst_1.jpg#0' -> ('burst_1.jpg', 'cam_b', '0'): how the page names a crop, as ANSWERS spells it."""
    file, _, detection = item_key.rpartition("#")
    folder, _, name = file.rpartition("/")
    return name, folder.replace("/", "\\"), detection


@contextlib.contextmanager
def browser():
    """Debian's chromium through Playwright; every request checked to stay on 127.0.0.1."""
    import pytest
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: run 'make test' or 'apt-get install chromium'")
    left_machine: list[str] = []
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def new_page(url: str, width: int = 1400, height: int = 1000):
            # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's CSP forbids.
            page = b.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
            page.on("pageerror", lambda e: left_machine.append(f"page error: {e}"))
            only_loopback(page, left_machine)
            page.goto(url)
            page.wait_for_function("document.body.dataset.shown >= '1'")
            return page

        try:
            yield new_page, left_machine
        finally:
            b.close()


def press(page, *keys: str) -> None:
    """Press keys in order and wait until every action they started has been saved."""
    for k in keys:
        page.keyboard.press(k)
    page.wait_for_function("document.body.dataset.busy === '0'")
