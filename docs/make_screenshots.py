"""Screenshots of the review and labelling pages for docs/web-pages.md, taken with Debian's chromium.

    .venv/bin/python docs/make_screenshots.py      # writes docs/img/review-page.jpg and docs/img/label-page.jpg

The review page shows a result built as bench/bench_review.py builds its season (the bundled photos,
jittered boxes); the labelling page a round-1 run of `trapkit al init` over the test suite's small trees.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "bench"), str(HERE.parent / "tests")]

VIEWPORT = {"width": 1400, "height": 860}


def shoot(url: str, out: Path, keys: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    from bench_review import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, bypass_csp=True)
        page.goto(url)
        page.wait_for_function("Number(document.body.dataset.shown || 0) >= 1", timeout=60_000)
        for key in keys:
            page.keyboard.press(key)
            page.wait_for_function("document.body.dataset.busy === '0'")
        page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete || "
                               "i.getBoundingClientRect().top > innerHeight)", timeout=60_000)
        page.screenshot(path=str(out), type="jpeg", quality=85)
        browser.close()


def main() -> None:
    from train_helpers import FAST, make_trees

    from bench_review import build_season
    from trapkit import grid
    from trapkit.app.cli import main as trapkit
    from trapkit.serve.review import open_review
    from trapkit.train.label_page import open_label_page

    (HERE / "img").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, results, _ = build_season(root, 60, 4, 0.05, seed=1)
        with grid.start(open_review(results, images, root / "answers.csv")) as server:
            # Two crops selected and given the second species, one wrong box, the cursor moved on.
            shoot(server.url, HERE / "img" / "review-page.jpg",
                  ["ArrowRight", "Space", "ArrowRight", "Space", "2", "ArrowRight", "x", "ArrowRight", "Space"])
        trees = make_trees(root / "trees", classes=("bear", "cattle", "dog"))
        run = root / "run"
        assert trapkit(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled",
                        str(trees["pool"]), "--validation", str(trees["validation"]), "--batch", "12", *FAST]) == 0
        with grid.start(open_label_page(run)) as server:
            shoot(server.url, HERE / "img" / "label-page.jpg", ["ArrowRight", "3", "ArrowRight", "ArrowRight", "Space"])


if __name__ == "__main__":
    main()
