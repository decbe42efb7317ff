"""`--ray`: the same jobs on a real Ray cluster (a head and a worker node on 127.0.0.1, tests/ray_cluster.py).

Classify on the cluster writes what a local run writes (confidences within 1e-4); a worker node killed
mid-run, and a driver killed mid-run (then resumed), change nothing; `--ray local` works and resumes a
local run; every way of getting `--ray` wrong is one line.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from classify_helpers import animal, write_detections
from ray_cluster import RayCluster, free_port
from trapkit.app.cli import main
from trapkit.serve.classify import KILL_AFTER_ENV, KILL_SIGNAL_ENV

CONF_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cluster_env():
    """The environment every Ray process of this module shares (set before Ray is first imported here)."""
    cluster = RayCluster(cpus=1)
    saved = {k: os.environ.get(k) for k in cluster.driver_env}
    os.environ.update(cluster.driver_env)
    try:
        yield cluster
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(cluster_env):
    """The two nodes, running (started once for the module, stopped by `cluster_env`)."""
    import ray._private.ray_constants as ray_constants

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before this module set its environment"
    return cluster_env.start()


@pytest.fixture(scope="module")
def season(tmp_path_factory, samples_dir):
    """14 copies of the bundled photos in two folders (1-3 detections each), and the local run's outputs."""
    root = tmp_path_factory.mktemp("season")
    images = _copy_photos(samples_dir, root / "images")
    md = _detections(samples_dir, root / "md.json")
    return images, md


@pytest.fixture(scope="module")
def reference(season, tiny_onnx_path, tmp_path_factory):
    images, md = season
    out = tmp_path_factory.mktemp("reference") / "out.json"
    assert main(_argv(images, md, tiny_onnx_path, out, "--features", str(out.with_suffix(".parquet")))) == 0
    return out


def _copy_photos(samples_dir: Path, images: Path) -> Path:
    source = json.loads((samples_dir / "md_v5a_detections.json").read_text())["images"]
    for folder in ("a", "b"):
        (images / folder).mkdir(parents=True)
        for im in source:
            shutil.copy(samples_dir / im["file"], images / folder / im["file"])
    return images


def _detections(samples_dir: Path, path: Path) -> Path:
    source = json.loads((samples_dir / "md_v5a_detections.json").read_text())["images"]
    entries = []
    for folder in ("a", "b"):
        for im in source:
            dets = [d for d in im["detections"] if d["conf"] >= 0.5][:3] or [animal(conf=0.8)]
            entries.append({"file": f"{folder}/{im['file']}", "detections": dets})
    return write_detections(path, entries[:14])


def _argv(images, md, model, out, *extra) -> list[str]:
    return ["classify", str(images), "--model", str(model), "--detections", str(md), "--out", str(out),
            "--csv", str(out.with_suffix(".csv")), "--checkpoint-every", "4", "--batch-size", "5", *extra]


def assert_same_output(got: Path, want: Path) -> None:
    """The same JSON and CSV apart from the completion time, confidences within CONF_TOLERANCE."""
    a, b = json.loads(got.read_text()), json.loads(want.read_text())
    for doc in (a, b):
        doc["info"].pop("classification_completion_time")
    for im_a, im_b in zip(a["images"], b["images"]):
        for det_a, det_b in zip(im_a["detections"] or (), im_b["detections"] or ()):
            ca, cb = det_a.pop("classifications", []), det_b.pop("classifications", [])
            assert [c for c, _ in ca] == [c for c, _ in cb], im_a["file"]
            assert all(abs(x - y) <= CONF_TOLERANCE for (_, x), (_, y) in zip(ca, cb)), im_a["file"]
    assert a == b
    rows_a, rows_b = (list(csv.DictReader(p.with_suffix(".csv").open())) for p in (got, want))
    assert len(rows_a) == len(rows_b) > 0
    for ra, rb in zip(rows_a, rows_b):
        assert abs(float(ra.pop("conf")) - float(rb.pop("conf"))) <= CONF_TOLERANCE
        assert ra == rb


def _one_line_error(capsys, fragment: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("trapkit: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    return lines[0]


# -- every way to get --ray wrong: one line (no cluster needed) -----------------------------

def test_bad_addresses_and_flag_mixes_are_one_line(season, tiny_onnx_path, tmp_path, capsys, cluster_env):
    images, md = season
    out = tmp_path / "out.json"
    for address in ("nowhere", "http://head:6379", "head:0", "ray://head"):
        assert main(_argv(images, md, tiny_onnx_path, out, "--ray", address)) == 1
        _one_line_error(capsys, "is not a Ray address; give host:port")
    assert main(_argv(images, md, tiny_onnx_path, out, "--ray-actors", "2")) == 1
    _one_line_error(capsys, "--ray-actors only applies with --ray ADDRESS")
    assert main(_argv(images, md, tiny_onnx_path, out, "--ray", "local", "--workers", "2", "--threads", "1")) == 1
    _one_line_error(capsys, "--workers, --threads do not apply with --ray")
    assert main(_argv(images, md, tiny_onnx_path, out, "--ray", "local", "--ray-actors", "0")) == 1
    _one_line_error(capsys, "actors must be at least 1")
    assert not out.exists()


def test_an_unreachable_cluster_is_one_line(season, tiny_onnx_path, tmp_path, capsys, cluster_env):
    images, md = season
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert main(_argv(images, md, tiny_onnx_path, tmp_path / "out.json", "--ray", address)) == 1
    _one_line_error(capsys, f"cannot reach the Ray cluster at {address}")
    assert main(_argv(images, md, tiny_onnx_path, tmp_path / "out.json", "--ray", f"ray://{address}")) == 1
    _one_line_error(capsys, "cannot reach the Ray cluster at ray://")


def test_auto_without_a_cluster_on_this_machine_is_one_line(season, tiny_onnx_path, tmp_path, capsys, cluster_env,
                                                           monkeypatch):
    if _ray_cluster_running():
        pytest.skip("a Ray cluster runs on this machine: --ray auto would find it")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    images, md = season
    assert main(_argv(images, md, tiny_onnx_path, tmp_path / "out.json", "--ray", "auto")) == 1
    _one_line_error(capsys, "--ray auto found no running Ray cluster on this machine")


def test_without_ray_installed_ray_says_how_to_install_it(season, tiny_onnx_path, tmp_path):
    images, md = season
    # A missing package, as Python sees one: its import fails.
    code = ("import sys; sys.modules['ray'] = None; from trapkit.app.cli import main; "
            f"sys.exit(main({_argv(images, md, tiny_onnx_path, tmp_path / 'out.json', '--ray', 'local')!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "trapkit: error: --ray needs Ray, which is not installed here; install it with pip install 'trapkit[ray]'")


# -- on the cluster ---------------------------------------------------------------------------

@pytest.mark.slow
def test_classify_on_a_two_node_cluster_equals_the_local_run(cluster, season, reference, tiny_onnx_path, tmp_path):
    import pandas as pd

    images, md = season
    out = tmp_path / "out.json"
    features = out.with_suffix(".parquet")
    assert main(_argv(images, md, tiny_onnx_path, out, "--features", str(features), "--ray", cluster.address)) == 0
    assert_same_output(out, reference)
    assert not out.with_name("out.json.checkpoint.json").exists()
    # The features table: the same rows (grouped by the chunks the cluster finished, so sorted here).
    got, want = (pd.read_parquet(p).sort_values(["file", "detection_index"], ignore_index=True)
                 for p in (features, reference.with_suffix(".parquet")))
    columns = [c for c in want.columns if c[0] == "f" and c[1:].isdigit()]  # f000 ...: the embedding
    assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got.drop(columns=columns + ["conf"]), want.drop(columns=columns + ["conf"]))
    assert (got["conf"] - want["conf"]).abs().max() <= CONF_TOLERANCE
    assert (got[columns] - want[columns]).abs().to_numpy().max() <= 1e-5


@pytest.mark.slow
def test_classify_through_ray_client_equals_the_local_run(cluster, season, reference, tiny_onnx_path, tmp_path):
    images, md = season
    out = tmp_path / "out.json"
    code = main(_argv(images, md, tiny_onnx_path, out, "--ray", f"ray://127.0.0.1:{cluster.client_port}"))
    logs = {f.name: f.read_text()[-3000:] for f in (cluster.tmp / "session_latest" / "logs").glob("ray_client_server*")}
    assert code == 0, logs
    assert_same_output(out, reference)


@pytest.mark.slow
def test_a_worker_node_killed_mid_run_loses_and_duplicates_nothing(cluster, season, reference, tiny_onnx_path,
                                                                   tmp_path):
    from trapkit.cluster import ClusterSettings
    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.serve.ray_classify import RayExecutor
    from trapkit.serve.runtime import open_runtime
    from trapkit.serve.settings import ClassifySettings

    images, md = season
    out = tmp_path / "out.json"
    killed, finished = [], threading.Event()

    def kill_when_paused():
        # The worker node pauses its first preparing task once `arm` exists (trapkit.cluster.PAUSE_ENV):
        # the job cannot finish before this kill, whatever the timing.
        while not any(cluster.pause.glob("paused.*")):
            if finished.wait(0.05):
                return
        (cluster.pause / "arm").unlink()
        killed.extend(cluster.kill_worker())

    (cluster.pause / "arm").touch()
    killer = threading.Thread(target=kill_when_paused)
    killer.start()
    try:
        settings = ClassifySettings(batch_size=5, checkpoint_every=4)
        with open_runtime(tiny_onnx_path, threads=1) as runtime:
            # Two images per task: 7 tasks, spread over both nodes.
            executor = RayExecutor(ClusterSettings(cluster.address, images_per_task=2))
            classify_images(ClassifyPaths(images, out, md, csv=out.with_suffix(".csv")), runtime, settings,
                            executor=executor)
    finally:
        finished.set()
        killer.join()
        for f in cluster.pause.iterdir():
            f.unlink()
    assert killed, "the worker node never ran a task"
    assert not any(_alive(pid) for pid in killed)
    assert_same_output(out, reference)
    cluster.start_worker()  # for the tests after this one


@pytest.mark.slow
def test_a_driver_killed_mid_run_on_ray_resumes_locally(cluster, season, reference, tiny_onnx_path, tmp_path):
    images, md = season
    out = tmp_path / "out.json"
    checkpoint = tmp_path / "out.json.checkpoint.json"
    env = {**os.environ, KILL_AFTER_ENV: "10"}  # SIGKILLed after 10 images came back: 8 checkpointed
    argv = _argv(images, md, tiny_onnx_path, out, "--ray", cluster.address)
    killed = subprocess.run([sys.executable, "-m", "trapkit.app.cli", *argv], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    assert len(json.loads(checkpoint.read_text())["done"]) == 8
    assert main(_argv(images, md, tiny_onnx_path, out, "--resume")) == 0  # locally: the same checkpoint
    assert_same_output(out, reference)
    assert not checkpoint.exists()


@pytest.mark.slow
def test_ray_local_resumes_an_interrupted_local_run(cluster_env, season, reference, tiny_onnx_path, tmp_path,
                                                    monkeypatch):
    images, md = season
    out = tmp_path / "out.json"
    monkeypatch.setenv(KILL_AFTER_ENV, "6")
    monkeypatch.setenv(KILL_SIGNAL_ENV, "SIGINT")  # a Ctrl-C after 6 images: 4 checkpointed
    assert main(_argv(images, md, tiny_onnx_path, out)) == 130
    monkeypatch.delenv(KILL_AFTER_ENV)
    assert len(json.loads((tmp_path / "out.json.checkpoint.json").read_text())["done"]) == 4
    assert main(_argv(images, md, tiny_onnx_path, out, "--ray", "local", "--resume")) == 0
    assert_same_output(out, reference)


@pytest.mark.slow
def test_al_embeds_the_pool_on_the_cluster_as_it_does_locally(cluster, tmp_path, caplog):
    import logging

    import numpy as np

    from train_helpers import FAST, make_trees
    from trapkit.train.run import Run

    trees = make_trees(tmp_path / "trees", pool_per_class=6)
    (trees["pool"] / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg" * 10)  # recorded the same way on both
    # A frozen embedder (no fine-tuning), so both runs embed with the same weights.
    argv = ["--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]), "--validation",
            str(trees["validation"]), "--batch", "4", *FAST, "--finetune-epochs", "0"]
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["al", "init", str(local), *argv]) == 0
    caplog.set_level(logging.INFO, logger="trapkit.cluster")
    assert main(["al", "init", str(remote), *argv, "--ray", cluster.address]) == 0
    assert "Ray cluster: 40 images" in caplog.text  # 12 seed, 9 validation, 18 + 1 in the pool

    def same_runs():
        (a,), (b,) = (sorted((run / "embeddings").glob("*.npy")) for run in (local, remote))
        x, y = np.load(a).astype(np.float32), np.load(b).astype(np.float32)  # (N, D) float16 caches
        assert x.shape == y.shape and np.abs(x).max() > 0
        np.testing.assert_allclose(y, x, rtol=2**-10, atol=2**-14)  # float16 rounding: one unit in the last place
        ma, mb = (Run(run).load_manifest() for run in (local, remote))
        assert ma.equals(mb)
        assert (ma["status"] == "unreadable").sum() == 1

    same_runs()
    # `al next --rescan --ray`: the images added to the pool are embedded on the cluster, the others reused.
    for name in ("bear", "dog"):
        (trees["pool"] / "new").mkdir(exist_ok=True)
        (trees["pool"] / "new" / f"{name}.jpg").write_bytes((trees["labelled"] / name / f"{name}_0.jpg").read_bytes())
    assert main(["al", "next", str(local), "--rescan"]) == 0
    caplog.clear()
    assert main(["al", "next", str(remote), "--rescan", "--ray", cluster.address]) == 0
    assert "Ray cluster: 2 images" in caplog.text  # only the new ones
    same_runs()


@pytest.mark.slow
def test_al_on_detections_embeds_every_box_on_the_cluster_as_locally(cluster, tmp_path, caplog):
    import logging

    import numpy as np

    from train_helpers import detection_flags, make_detection_trees
    from trapkit.train.run import Run

    trees = make_detection_trees(tmp_path / "trees")
    argv = [*detection_flags(trees), "--finetune-epochs", "0"]  # a frozen embedder: the same weights in both
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["al", "init", str(local), *argv]) == 0
    caplog.set_level(logging.INFO, logger="trapkit.cluster")
    assert main(["al", "init", str(remote), *argv, "--ray", cluster.address]) == 0
    manifest = Run(local).load_manifest()
    images = manifest["root"] + "/" + manifest["path"]
    assert f"Ray cluster: {images.nunique()} images" in caplog.text  # each image prepared once for its boxes
    assert (manifest["detection"] != "").sum() > images.nunique()  # some images hold several items
    (a,), (b,) = (sorted((run / "embeddings").glob("*.npy")) for run in (local, remote))
    np.testing.assert_allclose(np.load(b).astype(np.float32), np.load(a).astype(np.float32), rtol=2**-10,
                               atol=2**-14)
    assert Run(remote).load_manifest().equals(manifest)  # EXIF times of the frames included


@pytest.mark.slow
def test_images_a_node_cannot_see_stop_the_run_in_one_line(cluster, samples_dir, tiny_onnx_path, capsys):
    if not cluster.hides:
        pytest.skip("this OS allows no private mount namespace (needs root or user namespaces) to hide a folder")
    images = _copy_photos(samples_dir, cluster.hidden / "images")  # seen here and by the head, not the worker
    md = _detections(samples_dir, cluster.tmp / "hidden-md.json")
    out = cluster.tmp / "hidden-out.json"
    assert main(_argv(images, md, tiny_onnx_path, out, "--ray", cluster.address)) == 1
    line = _one_line_error(capsys, "Ray node 127.0.0.1")
    assert f"cannot see the image folder {images}" in line and "every node mounts" in line
    assert not out.exists()


def _ray_cluster_running() -> bool:
    """Whether any Ray head (its GCS server) runs on this machine, whoever started it."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"gcs_server" in cmdline.read_bytes():
                return True
        except OSError:
            continue  # exited meanwhile
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
