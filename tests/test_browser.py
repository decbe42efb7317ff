"""End to end in a real headless Chromium: upload a bundled photo to the demo and read the label it shows.

Needs Debian's `chromium` (`apt-get install chromium`); Playwright drives it
through `executable_path`, no browser download. Every request the page makes
is checked to stay on 127.0.0.1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
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
            page.wait_for_function("document.querySelector('#table').textContent.includes('ocelot.jpg')",
                                   timeout=60_000)
            example_label = shown.inner_text().strip()
        finally:
            browser.close()
    assert label in runtime.spec.labels and example_label in runtime.spec.labels
    assert "in 1 photo(s)" in status
    assert left_machine == []
