"""Classifying on a real Triton server (the `tritonserver` binary from nvidia-pytriton) on 127.0.0.1.

The server runs the exported model.onnx through the Python backend; results
must match local onnxruntime within 1e-4, server trouble must end in one-line
errors, and a server that dies mid-run must lose nothing after --resume.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest

from triton_repo import copy_broken, copy_without_spec
from triton_server import TritonServer, free_port
from trapkit.app.cli import main
from trapkit.errors import TrapkitError

pytestmark = pytest.mark.slow
MODEL = "tiny"
MAX_BATCH = 4


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """(model.onnx, model repository with the Python-backend model `tiny`), by `trapkit export`."""
    out = tmp_path_factory.mktemp("export")
    assert main(["export", str(tiny_model_dir), "--out", str(out / "onnx"), "--triton", str(out / "repo"),
                 "--name", MODEL, "--triton-backend", "python", "--max-batch-size", str(MAX_BATCH)]) == 0
    return out / "onnx" / "model.onnx", out / "repo"


@pytest.fixture(scope="module")
def onnx_path(exported):
    return exported[0]


@pytest.fixture(scope="module")
def tiny_repo(exported):
    """A model repository holding the tiny model alone."""
    return exported[1]


@pytest.fixture(scope="module")
def triton_repo(exported, tmp_path_factory):
    """The tiny model, the same without a spec parameter, and a model that fails to load."""
    repo = tmp_path_factory.mktemp("triton_repo") / "repo"
    shutil.copytree(exported[1], repo)
    copy_without_spec(repo, MODEL, f"{MODEL}_nospec")
    # Its initialize fails: the server stays up and ready (readiness not strict) with it UNAVAILABLE.
    copy_broken(repo, MODEL, "broken", "weights missing")
    return repo


@pytest.fixture(scope="module")
def triton(triton_repo, tmp_path_factory):
    """A running server for the module; a start failure fails the tests with the server log."""
    server = TritonServer(triton_repo, workdir=tmp_path_factory.mktemp("triton_server"),
                          extra_args=("--exit-on-error=false", "--strict-readiness=false")).start()
    yield server
    server.stop()


@pytest.fixture
def own_triton(tiny_repo, tmp_path):
    """A server this test may kill."""
    server = TritonServer(tiny_repo, workdir=tmp_path / "server").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def photos(onnx_path):
    from trapkit.export.onnx_export import bundled_parity_images
    from trapkit.graph import read_spec

    return bundled_parity_images(read_spec(onnx_path))  # (10, 32, 32, 3) uint8


def _runtime(server, **kw):
    from trapkit.serve.triton_runtime import TritonRuntime

    return TritonRuntime(server.url, MODEL, **kw)


def test_spec_comes_from_the_server(triton, onnx_path):
    from trapkit.graph import read_spec

    with _runtime(triton) as rt:
        assert rt.spec == read_spec(onnx_path)
        assert rt.io.max_batch_size == MAX_BATCH and rt.io.input_size == 32


def test_spec_falls_back_to_served_labels(triton, onnx_path, photos, caplog):
    from trapkit.graph import read_spec
    from trapkit.serve.triton_runtime import TritonRuntime

    spec = read_spec(onnx_path)
    with TritonRuntime(triton.url, f"{MODEL}_nospec") as rt:
        assert rt.spec.labels == spec.labels and rt.spec.input_size == spec.input_size
        assert rt.predict(photos).shape == (10, 5)
    assert "has no trapkit.spec parameter" in caplog.text


def test_local_spec_that_does_not_fit_the_server_is_refused(triton, onnx_path):
    from trapkit.graph import read_spec
    from trapkit.serve.triton_runtime import TritonRuntime

    other = read_spec(onnx_path).replace(labels=("cat", "dog"))
    with pytest.raises(TrapkitError, match=r"into 5 classes but the model spec says 32 px, 2 classes; pass"):
        TritonRuntime(triton.url, MODEL, spec=other)


def test_predict_matches_onnxruntime_and_single_images(triton, onnx_path, photos):
    from trapkit.serve.runtime import OnnxRuntime

    local = OnnxRuntime(onnx_path).predict(photos)
    # 10 images > max batch 4: three chunks in flight at once, results back in input order.
    with _runtime(triton, concurrency=3) as rt:
        batched = rt.predict(photos)
        one_by_one = np.concatenate([rt.predict(photos[i:i + 1]) for i in range(len(photos))])
        empty = rt.predict(photos[:0])
    assert batched.dtype == np.float32 and batched.shape == local.shape == (10, 5)
    np.testing.assert_allclose(batched, local, atol=1e-4, rtol=0)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-6, rtol=0)
    assert empty.shape == (0, 5)


def test_predict_with_embedding_matches_onnxruntime(triton, onnx_path, photos):
    from trapkit.serve.runtime import OnnxRuntime

    local_probs, local_embedding = OnnxRuntime(onnx_path).predict(photos, embedding=True)
    with _runtime(triton, concurrency=3) as rt:
        assert rt.embedding_size == local_embedding.shape[1] == 16
        probs, embedding = rt.predict(photos, embedding=True)  # three chunks, both outputs of each
        empty = rt.predict(photos[:0], embedding=True)
    np.testing.assert_allclose(probs, local_probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(embedding, local_embedding, atol=1e-5, rtol=0)
    assert embedding.dtype == np.float32 and [a.shape for a in empty] == [(0, 5), (0, 16)]


def test_features_over_triton_match_local(triton, onnx_path, samples_dir, tmp_path):
    import pandas as pd

    args = ["classify", str(samples_dir), "--detections", str(samples_dir / "md_v5a_detections.json")]
    assert main([*args, "--model", str(onnx_path), "--out", str(tmp_path / "l.json"),
                 "--features", str(tmp_path / "local.parquet")]) == 0
    # --model beside --triton-url: the spec and the model digest come from the file the server was given.
    assert main([*args, "--model", str(onnx_path), "--triton-url", triton.url, "--triton-model", MODEL,
                 "--out", str(tmp_path / "t.json"), "--features", str(tmp_path / "triton.parquet")]) == 0
    local, remote = (pd.read_parquet(tmp_path / f) for f in ("local.parquet", "triton.parquet"))
    assert len(local) == 13
    np.testing.assert_allclose(remote.filter(like="f0").to_numpy(), local.filter(like="f0").to_numpy(), atol=1e-5)
    assert main(["features", str(tmp_path / "local.parquet"), str(tmp_path / "triton.parquet"),
                 "--out", str(tmp_path / "space"), "--morphs", "2"]) == 0  # one model: the tables combine


def test_classification_extension_serves_the_labels(triton, onnx_path, photos):
    import tritonclient.http as httpclient

    from trapkit.serve.runtime import OnnxRuntime

    runtime = OnnxRuntime(onnx_path)
    probs = runtime.predict(photos[:3])
    client = httpclient.InferenceServerClient(triton.url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("images", list(photos[:3].shape), "UINT8")
        inp.set_data_from_numpy(photos[:3])
        out = httpclient.InferRequestedOutput("probs", class_count=3)
        top = client.infer(MODEL, [inp], outputs=[out]).as_numpy("probs")  # (3, 3) b"score:index:label"
    finally:
        client.close()
    for row, p in zip(top, probs, strict=True):
        entries = [e.decode().split(":", 2) for e in row]
        assert [int(i) for _, i, _ in entries] == list(np.argsort(-p)[:3])
        assert [label for _, _, label in entries] == [runtime.spec.labels[i] for i in np.argsort(-p)[:3]]
        np.testing.assert_allclose([float(s) for s, _, _ in entries], np.sort(p)[::-1][:3], atol=1e-4)
    with _runtime(triton) as rt:
        best_two = [runtime.spec.labels[i] for i in np.argsort(-probs[0])[:2]]
        assert [label for label, _ in rt.top_classes(photos[:1], 2)[0]] == best_two


def test_classify_over_triton_matches_local(triton, onnx_path, samples_dir, tmp_path):
    args = ["classify", str(samples_dir), "--detections", str(samples_dir / "md_v5a_detections.json"),
            "--batch-size", "3", "--workers", "2"]
    assert main([*args, "--model", str(onnx_path), "--out", str(tmp_path / "local.json")]) == 0
    assert main([*args, "--triton-url", triton.url, "--triton-model", MODEL, "--concurrency", "2",
                 "--out", str(tmp_path / "triton.json")]) == 0
    local = json.loads((tmp_path / "local.json").read_text())
    remote = json.loads((tmp_path / "triton.json").read_text())
    assert remote["classification_categories"] == local["classification_categories"]
    pairs = [(a, b) for ia, ib in zip(local["images"], remote["images"], strict=True)
             for a, b in zip(ia["detections"] or [], ib["detections"] or [], strict=True) if "classifications" in a]
    assert pairs, "the bundled detections should include animals to classify"
    for a, b in pairs:
        assert [c for c, _ in a["classifications"]] == [c for c, _ in b["classifications"]]
        # Confidences are written rounded to 4 decimals: a 1e-4 step at most.
        np.testing.assert_allclose([p for _, p in a["classifications"]], [p for _, p in b["classifications"]],
                                   atol=1e-4 + 1e-9, rtol=0)


def test_server_not_there_is_one_line_error(onnx_path, samples_dir, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["classify", str(samples_dir), "--model", str(onnx_path), "--triton-url", url,
                 "--triton-model", MODEL, "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == f"trapkit: error: Triton server at {url} is not reachable; start it or check --triton-url"


def test_unknown_model_names_the_served_ones(triton):
    from trapkit.serve.triton_runtime import TritonRuntime

    with pytest.raises(TrapkitError, match=r"no ready model 'nope' \(models there: broken, tiny, tiny_nospec\); check"):
        TritonRuntime(triton.url, "nope")


def test_model_that_failed_to_load_says_why(triton):
    from trapkit.serve.triton_runtime import TritonRuntime

    with pytest.raises(TrapkitError, match=r"model 'broken' at .* is not ready \(UNAVAILABLE: .*weights missing"):
        TritonRuntime(triton.url, "broken")


@pytest.mark.parametrize("url", ["grpc://127.0.0.1:8001", "http://:8000", "http://127.0.0.1:abc",
                                 "http://127.0.0.1:99999"])
def test_bad_url_is_refused(url):
    from trapkit.serve.triton_runtime import TritonRuntime

    with pytest.raises(TrapkitError, match="http://HOST:PORT"):
        TritonRuntime(url, MODEL)


def test_retries_ride_out_a_restart(own_triton, tiny_repo, photos, tmp_path):
    with _runtime(own_triton, retries=6, backoff=0.5) as rt:
        before = rt.predict(photos)
        own_triton.stop(kill=True)
        again = TritonServer(tiny_repo, workdir=tmp_path / "again", http_port=own_triton.http_port)
        restart = threading.Thread(target=lambda: (time.sleep(0.5), again.start()))
        restart.start()
        try:
            after = rt.predict(photos)  # refused connections, backoff, then the new server answers
        finally:
            restart.join()
            again.stop()
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_server_dying_mid_run_loses_nothing_after_resume(own_triton, tiny_repo, onnx_path, samples_dir,
                                                         tmp_path):
    """Kill the server while classify runs; `--resume` on a new server completes the run as if nothing happened.

    The interrupted run uses the library with short retries (the CLI's backoff would wait 15 s).
    """
    from trapkit.serve.classify import ClassifyPaths, ClassifySettings, classify_images
    from trapkit.serve.runtime import OnnxRuntime

    # 60 whole images (the ten photos six times), a checkpoint every 2: plenty of run left after the first one.
    images = tmp_path / "images"
    images.mkdir()
    for k in range(6):
        for p in sorted(samples_dir.glob("*.jpg")):
            shutil.copy(p, images / f"{k}_{p.name}")
    settings = ClassifySettings(batch_size=2, checkpoint_every=2, workers=1)
    paths = ClassifyPaths(images_dir=images, out=tmp_path / "triton.json")

    class KilledOnThirdBatch:
        """The Triton runtime; the server is SIGKILLed just before the third batch, after two checkpoints."""

        def __init__(self, runtime):
            self.runtime, self.spec, self.name, self.calls = runtime, runtime.spec, runtime.name, 0

        def predict(self, batch):
            self.calls += 1
            if self.calls == 3:
                own_triton.stop(kill=True)
            return self.runtime.predict(batch)

    with _runtime(own_triton, retries=1, backoff=0.1) as rt, \
            pytest.raises(TrapkitError, match="is not reachable; start it or check --triton-url"):
        classify_images(paths, KilledOnThirdBatch(rt), settings)
    done = json.loads(paths.checkpoint.read_text())
    assert not paths.out.exists()
    assert len(done["done"]) == 4  # two batches of two images were checkpointed before the outage

    again = TritonServer(tiny_repo, workdir=tmp_path / "again").start()
    try:
        assert main(["classify", str(images), "--out", str(paths.out), "--triton-url", again.url,
                     "--triton-model", MODEL, "--checkpoint-every", "2", "--resume"]) == 0
    finally:
        again.stop()
    assert not paths.checkpoint.exists()
    with OnnxRuntime(onnx_path) as local:
        classify_images(ClassifyPaths(images_dir=images, out=tmp_path / "local.json"), local, settings)
    resumed = json.loads(paths.out.read_text())["images"]
    expected = json.loads((tmp_path / "local.json").read_text())["images"]
    assert [r["file"] for r in resumed] == [e["file"] for e in expected] and len(resumed) == 60
    for r, e in zip(resumed, expected, strict=True):
        (dr,), (de,) = r["detections"], e["detections"]
        assert [c for c, _ in dr["classifications"]] == [c for c, _ in de["classifications"]]
        np.testing.assert_allclose([p for _, p in dr["classifications"]], [p for _, p in de["classifications"]],
                                   atol=1e-4 + 1e-9)
