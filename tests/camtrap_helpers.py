"""Camtrap DP validation for tests: `frictionless` against the published 1.0 profile and schemas, served locally.

The package trapkit writes points at the schemas' published URLs. `validate` serves the fixtures
(tests/fixtures/camtrap-dp-1.0) from a stdlib HTTP server on 127.0.0.1, with every published URL in them
(and in a copy of the package's descriptor) rewritten to that server, so frictionless reads the real files
and nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "camtrap-dp-1.0"
PUBLISHED = {
    "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/": "camtrap-dp/1.0.2/",
    "https://specs.frictionlessdata.io/schemas/data-package.json": "data-package.json",
    "http://json.schemastore.org/geojson.json": "geojson.json",
}


def _site(folder: Path, base: str) -> None:
    """The fixtures laid out under `folder` as the server shows them, published URLs rewritten to `base`."""
    import frictionless

    (folder / "camtrap-dp" / "1.0.2").mkdir(parents=True)
    for name in ("camtrap-dp-profile.json", "deployments-table-schema.json", "media-table-schema.json",
                 "observations-table-schema.json"):
        (folder / "camtrap-dp" / "1.0.2" / name).write_text(_local((FIXTURES / name).read_text(), base))
    shutil.copy(FIXTURES / "data-package.json", folder / "data-package.json")
    shutil.copy(Path(frictionless.__file__).parent / "assets" / "profiles" / "geojson.json", folder / "geojson.json")


def _local(text: str, base: str) -> str:
    for url, path in PUBLISHED.items():
        text = text.replace(url, base + path)
    return text


class _Quiet(SimpleHTTPRequestHandler):
    requested: list[str]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        self.requested.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def schema_server(tmp_path: Path):
    """Yield the base URL of a 127.0.0.1 server holding the profile and schemas, and the paths it was asked for."""
    site = tmp_path / "schema-site"
    requested: list[str] = []
    handler = type("Handler", (_Quiet,), {"requested": requested})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(site)))
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    _site(site, base)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, requested
    finally:
        server.shutdown()
        server.server_close()


def validate(package: Path, tmp_path: Path):
    """frictionless's report on `package` (a folder) against the Camtrap DP 1.0 profile and table schemas."""
    import frictionless

    # frictionless's CSV parser raises the csv module's field size limit for the whole process when it is
    # imported; put it back, so the answers reader's own limit (tested elsewhere) holds in the same test run.
    limit = csv.field_size_limit()
    with schema_server(tmp_path) as (base, requested), _restored(limit):
        descriptor = json.loads((package / "datapackage.json").read_text())
        local = json.loads(_local(json.dumps(descriptor), base))
        copy = package / "datapackage.local.json"
        copy.write_text(json.dumps(local))
        try:
            report = frictionless.Package(str(copy), basepath=str(package)).validate()
        finally:
            copy.unlink()
    assert any(p.endswith("camtrap-dp-profile.json") for p in requested), requested  # the profile was applied
    assert sum(p.endswith("-table-schema.json") for p in requested) >= 3, requested
    return report


@contextlib.contextmanager
def _restored(limit: int):
    try:
        yield
    finally:
        csv.field_size_limit(limit)


def errors(report) -> list[str]:
    return [f"{e.type}: {e.note}" for task in report.tasks for e in task.errors] + \
        [f"{e.type}: {e.note}" for e in report.errors]
