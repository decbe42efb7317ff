"""The worked example of docs/ecology.md and its pictures: a simulated season through camtrap-dp and report.

    .venv/bin/python docs/make_ecology_pictures.py     # writes docs/img/ecology-*.png and docs/img/report-page.png

The season: 12 cameras for 8 weeks; red foxes (night, most sites), roe deer (dawn and dusk, half the sites),
badgers (night, a few sites) and people (day); bursts of three photos; one camera's clock reset, one camera
that stopped early. Tiny JPEGs carry the EXIF times; the classify output is written in `trapkit classify`'s
format with the taxonomy, and a person's answers for some detections.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]

SPECIES = {"red fox": (22.5, 3.0, 0.8, 0.5), "roe deer": (6.0, 4.0, 0.5, 0.35),  # peak hour, kappa, psi, p
           "badger": (0.5, 4.0, 0.3, 0.4)}


def build(root: Path, seed: int = 7) -> None:
    from ecology_helpers import animal, deployments_csv, person, photo, results

    rng = np.random.default_rng(seed)
    start = datetime(2024, 5, 1)
    entries, answers = [], []
    sheet = []
    for c in range(12):
        dep = f"cam{c + 1:02d}"
        days = 56 if c != 7 else 30  # cam08's battery died
        sheet.append({"deploymentID": dep, "locationName": f"transect {'AB'[c % 2]} point {c // 2 + 1}",
                      "latitude": round(52.70 + 0.01 * c, 4), "longitude": round(23.84 + 0.012 * c, 4),
                      "deploymentStart": f"{start:%Y-%m-%d}T00:00:00", "deploymentEnd": "2024-06-26T12:00:00",
                      "cameraModel": "Reconyx HF2X"})
        for name, (peak, kappa, psi, p) in SPECIES.items():
            if rng.random() > psi:
                continue
            for day in range(days):
                if rng.random() > p / 3:
                    continue
                hour = (peak + rng.vonmises(0, kappa) * 24 / (2 * np.pi)) % 24
                when = start + timedelta(days=day, hours=float(hour))
                n = 1 + int(rng.random() < 0.2)
                for k in range(3):
                    file = f"{dep}/{when:%Y%m%d_%H%M%S}_{k}.jpg"
                    conf = float(rng.uniform(0.55, 0.99))
                    label = name if rng.random() < 0.93 else next(s for s in SPECIES if s != name)
                    photo(root / "images" / file, when + timedelta(seconds=2 * k) if dep != "cam05" or day < 40
                          else when - timedelta(days=3650))  # cam05's clock reset on day 40
                    entries.append({"file": file, "detections": [animal(label, conf=round(conf, 3))] * n})
                    if rng.random() < 0.08:
                        answers.append((file, name if rng.random() < 0.97 else "[wrong box]"))
        for day in range(0, days, 9):
            when = start + timedelta(days=day, hours=13)
            file = f"{dep}/{when:%Y%m%d_%H%M%S}_p.jpg"
            photo(root / "images" / file, when)
            entries.append({"file": file, "detections": [person()] if day % 2 else []})
    (root / "classified.json").write_text(json.dumps(results(entries, classifier="forest-mammals-v3")))
    deployments_csv(root / "deployments.csv", sheet)
    lines = ["File,RelativePath,Detection,Species"] + [
        f"{f.rsplit('/', 1)[1]},{f.rsplit('/', 1)[0]},0,{s}" for f, s in answers]
    (root / "verified.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    from trapkit.app.cli import main as trapkit

    img = HERE / "img"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root)
        common = ["--images", str(root / "images"), "--deployments", str(root / "deployments.csv"),
                  "--timezone", "Europe/Warsaw", "--verified", str(root / "verified.csv"), "--verified-by", "A. Ruiz"]
        assert trapkit(["camtrap-dp", str(root / "classified.json"), *common, "--out", str(root / "package"),
                        "--title", "Forest mammals 2024", "--contributor", "A. Ruiz <a.ruiz@example.org>",
                        "--sampling-design", "systematicRandom"]) == 0
        assert trapkit(["report", str(root / "classified.json"), *common, "--out", str(root / "report"),
                        "--overlap", "red fox", "badger"]) == 0
        for name in ("camera_operation", "activity", "occupancy", "rai"):
            shutil.copy(root / "report" / f"{name}.png", img / f"ecology-{name}.png")
        _screenshot(root / "report", img / "report-page.png")


def _screenshot(folder: Path, out: Path) -> None:
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from playwright.sync_api import sync_playwright

    from review_helpers import CHROMIUM, CHROMIUM_ARGS

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/report.html")
            page.wait_for_load_state("load")
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
