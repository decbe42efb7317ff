"""End to end in a real headless Chromium: upload a bundled photo to the demo and read the label it shows.

Needs Debian's `chromium` (`apt-get install chromium`); Playwright drives it
through `executable_path`, no browser download. Every request the page makes
is checked to stay on 127.0.0.1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from classify_helpers import onnx_with_spec
from web_helpers import launched, only_loopback

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/trapkit-demo-browser.png")

pytestmark = pytest.mark.slow


def test_browser_upload_shows_a_model_label(tiny_onnx_path, samples_dir):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():  # `make test` installs it; a bare pytest run may not have
        pytest.fail("Debian chromium is not installed: run 'make test' or 'apt-get install chromium'")
    from trapkit.serve.demo import build_demo
    from trapkit.serve.runtime import open_runtime

    runtime = open_runtime(tiny_onnx_path)
    app = build_demo(runtime, samples_dir / "md_v5a_detections.json")
    left_machine = []
    with launched(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            only_loopback(page, left_machine)
            page.goto(url)
            page.locator("#photos input[type=file]").set_input_files(str(samples_dir / "african_elephants.jpg"))
            shown = page.locator("#top-species [data-testid=label-output-value]")
            shown.wait_for(timeout=60_000)
            label = shown.inner_text().strip()
            page.locator("#status").get_by_text("Classified").wait_for(timeout=30_000)
            status = page.locator("#status").inner_text()
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            # A bundled example classifies on click.
            page.get_by_role("button", name="ocelot", exact=True).click()
            page.locator("#table").get_by_text("ocelot.jpg").first.wait_for(state="attached", timeout=60_000)
            example_label = shown.inner_text().strip()
        finally:
            browser.close()
    assert label in runtime.spec.labels and example_label in runtime.spec.labels
    assert "in 1 photo(s)" in status
    assert left_machine == []


# Model-provided text that a Markdown or HTML renderer would turn into requests to another site.
HOSTILE_NAME = "![t](http://evil.example/track.png)"
HOSTILE_LABELS = ("![bear](http://evil.example/bear.png)", '<img src="http://evil.example/cattle.png">', "dog",
                  "elephant", "ocelot")


def test_model_text_is_shown_as_text_and_nothing_leaves_the_machine(tiny_onnx_path, samples_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    from trapkit.serve.demo import build_demo
    from trapkit.serve.runtime import open_runtime

    hostile = onnx_with_spec(tiny_onnx_path, tmp_path / "model.onnx", labels=HOSTILE_LABELS, name=HOSTILE_NAME)
    runtime = open_runtime(hostile)
    app = build_demo(runtime, samples_dir / "md_v5a_detections.json", top_k=5)
    left_machine, refused = [], []
    with launched(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            only_loopback(page, left_machine)
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            response = page.goto(url)
            page.locator("#photos input[type=file]").set_input_files(str(samples_dir / "african_elephants.jpg"))
            page.locator("#top-species [data-testid=label-output-value]").wait_for(timeout=60_000)
            page.locator("#table").get_by_text("african_elephants.jpg").first.wait_for(state="attached", timeout=60_000)
            text = page.locator("body").inner_text() + page.locator("#model textarea").input_value()
        finally:
            browser.close()
    assert left_machine == [] and refused == []  # nothing fetched elsewhere, and the page needs nothing the policy bars
    assert HOSTILE_NAME in text and all(label in text for label in HOSTILE_LABELS)  # shown as written (top 5 of 5)
    assert "default-src 'self'" in response.headers["content-security-policy"]
