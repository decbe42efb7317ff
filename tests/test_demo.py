"""The Gradio demo: batched classification, per-upload errors, the launched page driven by gradio_client."""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest
from web_helpers import client, huge_png, launched, outside_connections

from trapkit.app.cli import main
from trapkit.serve.demo import DemoSettings, DetectionIndex, build_demo, classify_requests
from trapkit.serve.runtime import open_runtime

ATOL = 1e-5


@pytest.fixture(scope="module")
def runtime(tiny_onnx_path):
    return open_runtime(tiny_onnx_path)


class _Gated:
    """A runtime whose calls wait at a gate while it is closed: the page's queue fills up deterministically."""

    def __init__(self, runtime):
        self.runtime, self.spec, self.name = runtime, runtime.spec, runtime.name
        self.closed, self.opened, self.waiting = threading.Event(), threading.Event(), threading.Event()

    def predict(self, batch):
        if self.closed.is_set():
            self.waiting.set()
            self.opened.wait(120)
        return self.runtime.predict(batch)


@pytest.fixture(scope="module")
def detections(samples_dir):
    return DetectionIndex.from_file(samples_dir / "md_v5a_detections.json")


def _animal_boxes(samples_dir, name, threshold=0.1):  # the tiny model's spec: animal boxes from 0.1 on
    doc = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    (im,) = [im for im in doc["images"] if im["file"] == name]
    return [d for d in im["detections"] if d["category"] == "1" and d["conf"] >= threshold]


def test_batched_requests_equal_one_by_one(runtime, detections, samples_dir):
    a = ([str(samples_dir / "african_elephants.jpg"), str(samples_dir / "blank.jpg")], detections)
    b = ([str(samples_dir / "ocelot.jpg")], None)
    settings = DemoSettings()
    together = classify_requests(runtime, [a, b], settings)
    alone = [classify_requests(runtime, [r], settings)[0] for r in (a, b)]
    for t, s in zip(together, alone):
        assert [p.name for p in t.photos] == [p.name for p in s.photos]
        for pt, ps in zip(t.photos, s.photos):
            assert [r.what for r in pt.regions] == [r.what for r in ps.regions]
            for rt, rs in zip(pt.regions, ps.regions):
                np.testing.assert_allclose(rt.probs, rs.probs, atol=ATOL)
    elephants, blank = together[0].photos
    # One classified region per animal box above the threshold, most confident first; blank has none.
    boxes = _animal_boxes(samples_dir, "african_elephants.jpg")
    assert len(elephants.regions) == len(boxes) > 1
    assert elephants.regions[0].what == f"animal {max(d['conf'] for d in boxes):.2f}"
    assert blank.regions == [] and "no animal" in blank.note
    # Without detections the photo is classified whole; probabilities are a distribution over the labels.
    (ocelot,) = together[1].photos
    assert [r.bbox for r in ocelot.regions] == [None]
    assert ocelot.regions[0].probs.shape == (runtime.spec.num_classes,)
    assert abs(float(ocelot.regions[0].probs.sum()) - 1.0) < 1e-4


def test_bad_uploads_are_reported_per_file_and_spare_the_batch(runtime, samples_dir, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    bomb = huge_png(tmp_path / "bomb.png")
    bad = ([str(text), str(empty), str(bomb), str(samples_dir / "ocelot.jpg")], None)
    good = ([str(samples_dir / "domestic_dog.jpg")], None)
    nothing = ([], None)
    bad_r, good_r, nothing_r = classify_requests(runtime, [bad, good, nothing], DemoSettings())
    assert [p.name for p in bad_r.photos] == ["ocelot.jpg"]
    assert len(bad_r.failures) == 3
    assert "notes.txt is not a readable image" in bad_r.failures[0]
    assert "empty.jpg is an empty file" in bad_r.failures[1]
    assert "bomb.png is over trapkit's limit of 179 megapixels" in bad_r.failures[2]
    assert str(tmp_path) not in bad_r.status  # names, not server paths
    assert [p.name for p in good_r.photos] == ["domestic_dog.jpg"] and not good_r.failures
    assert nothing_r.photos == [] and "Upload one or more photos" in nothing_r.status


def test_annotated_photo_has_boxes_drawn(runtime, detections, samples_dir):
    from trapkit.serve.demo import annotate

    (result,) = classify_requests(runtime, [([str(samples_dir / "african_elephants.jpg")], detections)],
                                  DemoSettings(display_size=512))
    photo = result.photos[0]
    drawn = np.asarray(annotate(photo, runtime.spec.labels), dtype=np.int16)
    plain = np.asarray(photo.image, dtype=np.int16)
    assert drawn.shape == plain.shape and max(drawn.shape[:2]) == 512
    # The box colour (255, 200, 0) appears only where boxes and labels are drawn.
    changed = np.abs(drawn - plain).sum(axis=2) > 0
    assert 0.001 < changed.mean() < 0.3


def test_demo_command_errors_are_one_line(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "missing.onnx")]) == 1
    assert "no ONNX model at" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "m.onnx"), "--top-k", "0"]) == 1
    assert "--top-k 0 must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "m.onnx"), "--max-batch", "0"]) == 1
    assert "--max-batch 0 must be at least 1" in capsys.readouterr().err
    bad_json = tmp_path / "md.json"
    bad_json.write_text("{")
    assert main(["demo", "--model", str(tmp_path / "m.onnx"), "--detections", str(bad_json)]) == 1
    assert "is not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_launched_demo_classifies_and_shows_errors(runtime, detections, samples_dir, tmp_path):
    from gradio_client import handle_file

    labels = set(runtime.spec.labels)
    gated = _Gated(runtime)
    app = build_demo(gated, detections, top_k=3)
    with outside_connections() as outside, launched(app) as url:
        c = client(url)
        photos = [handle_file(str(samples_dir / n)) for n in ("african_elephants.jpg", "ocelot.jpg", "blank.jpg")]
        gallery, best, table, status = c.predict(photos, None, api_name="/classify")
        assert best["label"] in labels and len(best["confidences"]) == 3
        assert [g["caption"].split(":")[0] for g in gallery] == ["african_elephants.jpg", "ocelot.jpg", "blank.jpg"]
        n_boxes = len(_animal_boxes(samples_dir, "african_elephants.jpg"))
        rows = table["data"]
        assert [r[0] for r in rows].count("african_elephants.jpg") == n_boxes
        assert all(r[2] in labels for r in rows if r[0] != "blank.jpg")
        assert status.startswith(f"Classified {n_boxes + 1} region(s) in 3 photo(s)")

        # A detections file uploaded on the page replaces the one given at start-up.
        whole = tmp_path / "none.json"
        whole.write_text(json.dumps({"info": {"format_version": "1.6"}, "detection_categories": {"1": "animal"},
                                     "images": []}))
        _, _, table, _ = c.predict([photos[0]], handle_file(str(whole)), api_name="/classify")
        assert [r[1] for r in table["data"]] == ["whole image"]

        text = tmp_path / "notes.txt"
        text.write_text("not a photo")
        gallery, best, _, status = c.predict([handle_file(str(text))], None, api_name="/classify")
        assert gallery == [] and "notes.txt is not a readable image" in status
        bomb = huge_png(tmp_path / "bomb.png")
        _, _, _, status = c.predict([handle_file(str(bomb))], None, api_name="/classify")
        assert "bomb.png is over trapkit's limit" in status
        for empty in ([], None):
            _, _, _, status = c.predict(empty, None, api_name="/classify")
            assert "Upload one or more photos" in status

        # Requests that queue up while the model is busy are grouped into one batch, each getting its own answer.
        everything = [handle_file(str(p)) for p in sorted(samples_dir.glob("*.jpg"))]
        names = ("domestic_dog.jpg", "domestic_cattle.jpg", "american_black_bear.jpg")
        waiting = [client(url) for _ in names]
        gated.closed.set()
        busy = c.submit(everything * 2, None, api_name="/classify")
        assert gated.waiting.wait(60)  # the busy request holds the model
        jobs = [w.submit([handle_file(str(samples_dir / n))], None, api_name="/classify") for w, n in zip(waiting, names)]
        deadline = time.monotonic() + 60
        while any(j.status().code.name != "IN_QUEUE" for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)  # a condition with a deadline, not a race: all three are queued before the gate opens
        gated.closed.clear()
        gated.opened.set()
        assert busy.result(timeout=60)[3].startswith("Classified")
        batch_sizes = []
        for job, name in zip(jobs, names):
            gallery, _, _, status = job.result(timeout=60)
            assert gallery[0]["caption"].startswith(name)
            batch_sizes.append(int(re.search(r"for a batch of (\d+) request", status)[1]))
        assert batch_sizes == [3, 3, 3]  # the three queued requests went to the model as one batch
    assert outside == []  # no analytics, version checks or CDN fetches from the app


def test_busy_port_is_a_clear_error(tiny_onnx_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--model", str(tiny_onnx_path), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1 port {port}" in err and "--port" in err



def test_a_host_that_is_not_this_machine_is_named_not_the_port(tiny_onnx_path, capsys):
    # 192.0.2.1 is reserved for documentation (RFC 5737): no machine has it.
    assert main(["demo", "--model", str(tiny_onnx_path), "--host", "192.0.2.1", "--port", "7999"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trapkit: error: cannot listen on host '192.0.2.1'") and "check --host" in err
    assert "--port" not in err


@pytest.mark.slow
def test_demo_command_serves_the_page_until_stopped(tiny_onnx_path, samples_dir, tmp_path):
    import subprocess
    import sys
    import time
    import urllib.request

    from web_helpers import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "trapkit.app.cli", "demo", "--model", str(tiny_onnx_path), "--port", str(port),
           "--detections", str(samples_dir / "md_v5a_detections.json")]
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, config = time.monotonic() + 120, None
        while config is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    config = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert config is not None, log.read_text()
        assert config["title"] == "trapkit demo: tiny-test-model"
        (classify,) = [d for d in config["dependencies"] if d.get("api_name") == "classify"]
        assert classify["queue"] and classify["batch"] and classify["max_batch_size"] == 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_pages_answer_only_their_own_host_names(runtime):
    # DNS rebinding: a page on another site that points its name at 127.0.0.1 must get nothing back.
    import http.client
    from urllib.parse import urlsplit

    app = build_demo(runtime)
    with launched(app) as url:
        port = urlsplit(url).port

        def status_for(host: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/config", headers={"Host": host})
            try:
                return conn.getresponse().status
            finally:
                conn.close()

        assert status_for(f"127.0.0.1:{port}") == 200 and status_for(f"localhost:{port}") == 200
        assert status_for(f"evil.example:{port}") == 400 and status_for("evil.example") == 400


def test_allowed_host_names_follow_the_listening_address():
    from trapkit.web import allowed_host_names, host_allowed

    local = allowed_host_names("127.0.0.1")
    assert host_allowed("127.0.0.1:7860", local) and host_allowed("localhost", local) and host_allowed("[::1]:80", local)
    assert not host_allowed("attacker.example:7860", local) and not host_allowed(None, local)
    assert host_allowed("anything.lan:7860", allowed_host_names("0.0.0.0"))  # exposed on purpose with --host
    assert host_allowed("192.168.1.5:7860", allowed_host_names("192.168.1.5"))
