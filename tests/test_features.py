"""Features out: `trapkit classify --features` tables and the `trapkit features` morphological space.

Real components throughout: the tiny exported model and the real offline
ImageNet EfficientNet-Lite0 (a real feature extractor) on the bundled photos.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classify_helpers import animal, burst_of_copies, write_detections
from trapkit.app.cli import main
from trapkit.errors import TrapkitError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIXED = ["file", "frame", "detection_index", "detection_conf", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "time", "label",
         "conf"]
ELEPHANT_CLASSES = ("tusker", "African elephant, Loxodonta africana", "Indian elephant, Elephas maximus")


def _classify(samples_dir, model, out_dir: Path, features: str, *extra) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    code = main(["classify", str(samples_dir), "--model", str(model), "--detections",
                 str(samples_dir / "md_v5a_detections.json"), "--out", str(out_dir / "out.json"),
                 "--features", str(out_dir / features), *extra])
    assert code == 0
    return out_dir / features


@pytest.fixture(scope="module")
def tiny_tables(samples_dir, tiny_onnx_path, tmp_path_factory) -> tuple[Path, Path]:
    """(features.parquet, features.csv) of the bundled photos, by the tiny model, in one folder each."""
    root = tmp_path_factory.mktemp("tiny_tables")
    return (_classify(samples_dir, tiny_onnx_path, root / "parquet", "features.parquet"),
            _classify(samples_dir, tiny_onnx_path, root / "csv", "features.csv"))


@pytest.fixture(scope="module")
def lite0_table(samples_dir, lite0_onnx_path, tmp_path_factory) -> Path:
    return _classify(samples_dir, lite0_onnx_path, tmp_path_factory.mktemp("lite0_table"), "features.parquet")


def _one_line_error(capsys, fragment: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("trapkit: error:") and fragment in err, err
    return err


def _png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100


# -- the table ---------------------------------------------------------------------------------------------------

def test_features_equal_the_graph_embedding_of_each_crop(tiny_tables, samples_dir, tiny_onnx_path):
    import onnxruntime as ort
    import pandas as pd

    from trapkit.graph import read_spec
    from trapkit.prepare import Preprocessing, prepare_image

    table = pd.read_parquet(tiny_tables[0])
    assert list(table.columns) == FIXED + [f"f{k:03d}" for k in range(16)]
    assert len(table) == 13  # every classified detection, one row each
    session = ort.InferenceSession(str(tiny_onnx_path), providers=["CPUExecutionProvider"])
    spec = read_spec(tiny_onnx_path)
    prep = Preprocessing.from_spec(spec)
    for file, rows in table.groupby("file", sort=False):
        # The image's crops cut by the core path as classify cuts them: all its boxes from one decode.
        boxes = rows[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy().tolist()
        crops = prepare_image(samples_dir / file, boxes, prep).crops  # (k, 32, 32, 3) uint8
        for crop, row in zip(crops, rows.itertuples(index=False)):
            probs, embedding = session.run(["probs", "embedding"], {"images": crop[None]})  # the graph, one crop
            np.testing.assert_allclose(np.asarray(row[len(FIXED):], np.float32), embedding[0], atol=1e-5, rtol=0)
            assert row.label == spec.labels[int(probs[0].argmax())]
            assert abs(row.conf - float(probs[0].max())) <= 1e-4
    # The box and the detector's confidence are MegaDetector's, the time the photo's EXIF time.
    md = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    first = next(im for im in md["images"] if im["file"] == table.file[0])["detections"][int(table.detection_index[0])]
    assert [table.bbox_x[0], table.bbox_y[0], table.bbox_w[0], table.bbox_h[0]] == first["bbox"]
    assert table.detection_conf[0] == first["conf"]
    elephants = table[table.file == "african_elephants.jpg"]
    assert (elephants.time == pd.Timestamp("2010-08-04 08:43:15")).all()
    assert table[table.file == "american_black_bear.jpg"].time.isna().all()  # that photo has no EXIF time


def test_parquet_reads_back_with_pyarrow_and_carries_the_fingerprint(tiny_tables, tiny_onnx_path):
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(tiny_tables[0])
    assert table.num_rows == 13 and table.schema.field("f000").type == "float"
    time = table.schema.field("time").type  # Parquet stores seconds as milliseconds
    assert pa.types.is_timestamp(time) and time.tz is None
    meta = json.loads(table.schema.metadata[b"trapkit.features"])
    digest = hashlib.sha256(Path(tiny_onnx_path).read_bytes()).hexdigest()
    assert meta["feature_size"] == 16 and meta["model_digest"] == f"sha256:{digest}"
    assert meta["input_size"] == 32 and meta["margin"] == 0.1 and meta["whole_images"] is False


def test_csv_opens_with_the_csv_module_and_equals_the_parquet(tiny_tables):
    import pandas as pd

    parquet, table_csv = tiny_tables
    with table_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == FIXED + [f"f{k:03d}" for k in range(16)]
    assert len(rows) == 14
    reference = pd.read_parquet(parquet)
    for row, (_, ref) in zip(rows[1:], reference.iterrows()):
        assert row[0] == ref.file and row[1] == "" and int(row[2]) == ref.detection_index and row[9] == ref.label
        # float32 written as its shortest round-trip text: exactly the same number back
        assert np.array_equal(np.asarray(row[11:], np.float32), ref.iloc[11:].to_numpy(np.float32))
    assert rows[1][8] == "2010-08-04 08:43:15"
    import pyarrow.parquet as pq

    sidecar = json.loads(table_csv.with_name("features.csv.meta.json").read_text())
    assert sidecar == json.loads(pq.read_schema(parquet).metadata[b"trapkit.features"])


def test_runtime_returns_the_embedding_with_the_probabilities(tiny_onnx_path):
    from trapkit.serve.runtime import open_runtime

    batch = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    with open_runtime(tiny_onnx_path) as rt:
        probs = rt.predict(batch)  # every existing caller: probabilities alone
        both, embedding = rt.predict(batch, embedding=True)
        single = np.concatenate([rt.predict(batch[i:i + 1], embedding=True)[1] for i in range(6)])
        assert rt.embedding_size == 16
    assert probs.shape == (6, 5) and embedding.shape == (6, 16) and embedding.dtype == np.float32
    np.testing.assert_array_equal(probs, both)
    np.testing.assert_allclose(embedding, single, atol=1e-5)


def test_whole_images_give_one_row_each(samples_copy, tiny_onnx_path, tmp_path):
    import pandas as pd

    for name in ("human.jpg", "vehicle.jpg", "md_v5a_detections.json", "README.md"):
        (samples_copy / name).unlink()
    out = tmp_path / "out.json"
    assert main(["classify", str(samples_copy), "--model", str(tiny_onnx_path), "--out", str(out),
                 "--features", str(tmp_path / "whole.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "whole.parquet")
    assert len(table) == 8 and (table.detection_index == 0).all() and (table.bbox_w == 1.0).all()
    report_dir = tmp_path / "space"
    assert main(["features", str(tmp_path / "whole.parquet"), "--out", str(report_dir), "--images",
                 str(samples_copy), "--morphs", "3", "--examples", "2"]) == 0
    _png(report_dir / "morphs.png")


def test_video_frames_have_rows_and_montage_crops(tiny_onnx_path, tmp_path, caplog):
    """Frame entries (clip.mp4/frame000003.jpg) and a video-level entry (detections with frame_number)."""
    import logging

    import onnxruntime as ort
    import pandas as pd

    from trapkit.graph import read_spec
    from trapkit.prepare import Preprocessing, crops_from_image
    from trapkit.video import read_frames
    from video_helpers import encode, photo_frames

    folder = tmp_path / "videos"
    encode(folder / "a.mp4", photo_frames(6))
    encode(folder / "b.mp4", photo_frames(6))
    box = animal(bbox=(0.1, 0.1, 0.5, 0.6))
    md = write_detections(tmp_path / "md.json", [
        {"file": "a.mp4/frame000000.jpg", "detections": [box]},
        {"file": "a.mp4/frame000003.jpg", "detections": [box]},
        {"file": "b.mp4", "frame_rate": 10.0, "detections": [{**box, "frame_number": 4}, {**box, "frame_number": 1}]},
    ])
    assert main(["classify", str(folder), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(tmp_path / "out.json"), "--features", str(tmp_path / "f.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert table.file.tolist() == ["a.mp4/frame000000.jpg", "a.mp4/frame000003.jpg", "b.mp4", "b.mp4"]
    assert table.frame.tolist() == [0, 3, 4, 1] and table.detection_index.tolist() == [0, 0, 0, 1]
    # The features are the graph's embedding of each box cut from its own frame.
    prep = Preprocessing.from_spec(read_spec(tiny_onnx_path))
    frames = {n: img for n, img, _ in read_frames(folder / "b.mp4", [1, 4])}
    session = ort.InferenceSession(str(tiny_onnx_path), providers=["CPUExecutionProvider"])
    for row in table[table.file == "b.mp4"].itertuples(index=False):
        crop = crops_from_image(frames[row.frame], [box["bbox"]], prep)
        (embedding,) = session.run(["embedding"], {"images": crop})
        np.testing.assert_allclose(np.asarray(row[len(FIXED):], np.float32), embedding[0], atol=1e-5, rtol=0)
    with caplog.at_level(logging.WARNING, logger="trapkit.ecology.features"):
        assert main(["features", str(tmp_path / "f.parquet"), "--out", str(tmp_path / "space"), "--images",
                     str(folder), "--morphs", "2", "--examples", "2"]) == 0
    assert "montage:" not in caplog.text  # every example crop was cut again from its video
    _png(tmp_path / "space" / "morphs.png")


# -- resume ------------------------------------------------------------------------------------------------------

@pytest.fixture
def burst(samples_dir, tmp_path):
    return burst_of_copies(samples_dir, tmp_path)


def _argv(images, md, model, out, features, *extra) -> list[str]:
    return ["classify", str(images), "--model", str(model), "--detections", str(md), "--out", str(out),
            "--features", str(features), "--checkpoint-every", "4", "--batch-size", "5", *extra]


@pytest.mark.slow
def test_resume_after_sigkill_writes_the_uninterrupted_table(burst, tiny_onnx_path, tmp_path):
    from trapkit.serve.classify import KILL_AFTER_ENV

    images, md = burst
    for suffix in (".parquet", ".csv"):
        reference = tmp_path / f"reference{suffix}"
        assert main(_argv(images, md, tiny_onnx_path, tmp_path / "reference.json", reference)) == 0
        out, features = tmp_path / f"out{suffix}.json", tmp_path / f"features{suffix}"
        killed = subprocess.run([sys.executable, "-m", "trapkit.app.cli", *_argv(images, md, tiny_onnx_path, out,
                                                                             features)],
                                env={**os.environ, KILL_AFTER_ENV: "10"}, capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        parts = out.with_name(out.name + ".checkpoint.features")
        assert len(list(parts.glob("part-*.npz"))) == 2 and not features.exists()  # 8 images committed
        # A part written just before a kill, whose checkpoint never followed (from a run with another
        # --checkpoint-every, so the resumed run does not overwrite it): its images are redone, it is dropped.
        stale = np.load(next(parts.glob("part-*.npz")))
        np.savez(parts / "part-000000011.npz", keys=np.array([[11, 0]]), embedding=stale["embedding"][:1] + 7,
                 images=np.array([11, 12]))
        assert main(_argv(images, md, tiny_onnx_path, out, features, "--resume")) == 0
        assert features.read_bytes() == reference.read_bytes()
        assert not parts.exists()


def test_resume_refuses_a_features_mismatch(burst, tiny_onnx_path, tmp_path, capsys, monkeypatch):
    from trapkit.serve.classify import KILL_AFTER_ENV, KILL_SIGNAL_ENV

    images, md = burst
    out, features = tmp_path / "out.json", tmp_path / "f.parquet"
    monkeypatch.setenv(KILL_AFTER_ENV, "6")
    monkeypatch.setenv(KILL_SIGNAL_ENV, "SIGINT")
    argv = _argv(images, md, tiny_onnx_path, out, features)
    plain = [a for a in argv if a not in ("--features", str(features))]
    assert main(plain) == 130  # started without --features
    monkeypatch.delenv(KILL_AFTER_ENV)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 1
    _one_line_error(capsys, "the interrupted run did not write features")
    assert main([*plain, "--resume"]) == 0 and not features.exists()

    monkeypatch.setenv(KILL_AFTER_ENV, "6")
    assert main(argv) == 130  # started with --features
    monkeypatch.delenv(KILL_AFTER_ENV)
    capsys.readouterr()
    assert main([*plain, "--resume"]) == 1
    _one_line_error(capsys, "resume it with the same --features FILE")
    assert main([*argv, "--resume"]) == 0 and features.exists()


# -- the morphological space -------------------------------------------------------------------------------------

def test_elephants_fall_in_one_morph(lite0_table, samples_dir, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "space"
    assert main(["features", str(lite0_table), "--out", str(out), "--images", str(samples_dir)]) == 0
    printed = capsys.readouterr().out
    assert "morphs (best silhouette of K = 2..10)" in printed
    morphs = pd.read_csv(out / "morphs.csv")
    summary = json.loads((out / "summary.json").read_text())
    k = summary["morphs"]
    assert 2 <= k <= 10 and summary["chosen_by"] == "silhouette"
    assert summary["silhouette"][str(k)] == max(summary["silhouette"].values())
    # Species are the ImageNet labels; the model calls 5 of the 7 elephant-photo crops an elephant.
    elephants = morphs[morphs.label.isin(ELEPHANT_CLASSES)]
    assert len(elephants) >= 4
    top = elephants.morph.value_counts()
    assert top.iloc[0] >= 0.8 * len(elephants)
    members = morphs[morphs.morph == top.index[0]]
    assert members.label.isin(ELEPHANT_CLASSES).mean() >= 0.8  # and that morph is elephants, not everything
    for name in ("map.png", "morphs.png", "diversity_by_folder.png"):
        _png(out / name)


def test_outputs_without_images_and_by_day(tiny_tables, tmp_path, caplog):
    import logging

    import pandas as pd

    out = tmp_path / "space"
    with caplog.at_level(logging.INFO, logger="trapkit.ecology.features"):
        assert main(["features", str(tiny_tables[0]), "--out", str(out), "--by", "day", "--morphs", "3",
                     "--map", "pca", "--examples", "2"]) == 0
    assert "no --images: no montage" in caplog.text and "no EXIF capture time" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["diversity_by_day.csv", "diversity_by_day.png", "map.png",
                                                     "morph_examples.csv", "morphs.csv", "summary.json"]
    _png(out / "map.png")
    _png(out / "diversity_by_day.png")
    morphs = pd.read_csv(out / "morphs.csv")
    assert len(morphs) == 13 and set(morphs.morph) == {0, 1, 2}
    sizes = morphs.morph.value_counts().sort_index().tolist()
    assert sizes == sorted(sizes, reverse=True)  # morph 0 is the largest
    examples = pd.read_csv(out / "morph_examples.csv")
    assert examples.groupby("morph").size().max() <= 2
    for morph, group in examples.groupby("morph"):
        nearest = morphs[morphs.morph == morph].distance.min()
        assert group.distance.iloc[0] == pytest.approx(nearest, abs=1e-5)
    with (out / "diversity_by_day.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["day"] for r in rows] == ["2006-02-10", "2010-08-04", "2014-09-26", "2017-07-13", "no time"]
    for r in rows:
        counts = np.array([int(r[f"morph_{m}"]) for m in range(3)], float)
        p = counts / counts.sum()
        nz = p[p > 0]
        assert int(r["detections"]) == counts.sum() and int(r["morphs_present"]) == len(nz)
        assert float(r["shannon"]) == pytest.approx(-(nz * np.log(nz)).sum(), abs=1e-5)
        assert float(r["simpson"]) == pytest.approx(1 - (p ** 2).sum(), abs=1e-5)


def test_tables_of_one_model_combine(tiny_tables, tmp_path):
    import pandas as pd

    out = tmp_path / "both"
    assert main(["features", *map(str, tiny_tables), "--out", str(out), "--morphs", "2"]) == 0
    morphs = pd.read_csv(out / "morphs.csv")
    assert len(morphs) == 26 and sorted(set(morphs.table)) == ["features.csv", "features.parquet"]
    # The same rows read from Parquet and from CSV land in the same morph.
    a, b = (morphs[morphs.table == t].morph.tolist() for t in ("features.parquet", "features.csv"))
    assert a == b


# -- one-line errors ---------------------------------------------------------------------------------------------

def test_tables_of_other_models_are_refused(tiny_tables, lite0_table, tiny_onnx_path, samples_dir, tmp_path,
                                            capsys):
    import onnx
    from onnx import numpy_helper

    assert main(["features", str(tiny_tables[0]), str(lite0_table), "--out", str(tmp_path / "x")]) == 1
    _one_line_error(capsys, "comes from another model than")
    capsys.readouterr()
    # Same spec, same feature size, other weights (a retrained model): the digest tells them apart.
    proto = onnx.load(str(tiny_onnx_path))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(proto, str(tmp_path / "retrained.onnx"))
    retrained = _classify(samples_dir, tmp_path / "retrained.onnx", tmp_path / "retrained", "f.parquet")
    assert main(["features", str(tiny_tables[0]), str(retrained), "--out", str(tmp_path / "x")]) == 1
    err = _one_line_error(capsys, "comes from another model than")
    assert "model digest sha256:" in err
    assert not (tmp_path / "x" / "map.png").exists()


def test_empty_table_is_refused(samples_dir, tiny_onnx_path, tmp_path, capsys):
    import pandas as pd

    table = _classify(samples_dir, tiny_onnx_path, tmp_path / "run", "f.parquet", "--threshold", "1.0")
    assert len(pd.read_parquet(table)) == 0  # a valid, empty table: nothing reached the threshold
    assert main(["features", str(table), "--out", str(tmp_path / "x")]) == 1
    _one_line_error(capsys, "has no rows (nothing was classified)")


def test_more_morphs_than_rows_is_refused(tiny_tables, tmp_path, capsys):
    assert main(["features", str(tiny_tables[0]), "--out", str(tmp_path / "x"), "--morphs", "14"]) == 1
    _one_line_error(capsys, "--morphs 14 is more than the 13 distinct detections (of 13)")
    assert main(["features", str(tiny_tables[0]), "--out", str(tmp_path / "x"), "--morphs", "0"]) == 1
    _one_line_error(capsys, "--morphs 0 must be at least 1")


@pytest.mark.parametrize("make, fragment", [
    (lambda t: t / "nothing.parquet", "does not exist"),
    (lambda t: _write(t / "text.parquet", b"not parquet at all"), "is not a readable Parquet file"),
    (lambda t: _plain_parquet(t / "plain.parquet"), "is not a trapkit features table (no trapkit.features metadata)"),
    (lambda t: _write(t / "lonely.csv", b"file,label\na.jpg,x\n"), "has no lonely.csv.meta.json beside it"),
    (lambda t: _write(t / "table.txt", b"x"), "must end in .parquet or .csv"),
    (lambda t: _bad_sidecar(t), "metadata lacks feature_size"),
])
def test_files_that_are_not_features_tables_are_refused(tmp_path, capsys, make, fragment):
    path = make(tmp_path)
    assert main(["features", str(path), "--out", str(tmp_path / "x")]) == 1
    _one_line_error(capsys, fragment)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _plain_parquet(path: Path) -> Path:
    import pandas as pd

    pd.DataFrame({"file": ["a.jpg"], "f000": [0.5]}).to_parquet(path)
    return path


def _bad_sidecar(tmp_path: Path) -> Path:
    path = _write(tmp_path / "t.csv", b"file\na.jpg\n")
    (tmp_path / "t.csv.meta.json").write_text(json.dumps({"format_version": 1, "model_digest": "sha256:0"}))
    return path


def test_newer_table_format_says_upgrade(tiny_tables, tmp_path, capsys):
    table = tmp_path / "newer.csv"
    table.write_bytes(tiny_tables[1].read_bytes())
    meta = json.loads(tiny_tables[1].with_name("features.csv.meta.json").read_text())
    (tmp_path / "newer.csv.meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    assert main(["features", str(table), "--out", str(tmp_path / "x")]) == 1
    _one_line_error(capsys, "newer than this trapkit understands")


@pytest.mark.parametrize("out, fragment", [
    (lambda t: "/proc/trapkit-features", "cannot write --out /proc/trapkit-features"),
    (lambda t: t / "file", "is a file; give a folder"),
])
def test_unwritable_out_is_refused(tiny_tables, tmp_path, capsys, out, fragment):
    (tmp_path / "file").write_text("x")
    assert main(["features", str(tiny_tables[0]), "--out", str(out(tmp_path))]) == 1
    _one_line_error(capsys, fragment)


def test_montage_from_the_wrong_images_folder_is_refused(tiny_tables, tmp_path, capsys):
    assert main(["features", str(tiny_tables[0]), "--out", str(tmp_path / "x"), "--images", str(tmp_path)]) == 1
    _one_line_error(capsys, "holds none of the montage's photos")
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.parametrize("features, fragment", [
    ("features.json", "must end in .parquet or .csv"),
    ("folder.parquet", "is a folder; give a file name"),
    ("/proc/trapkit/f.parquet", "cannot write --features /proc/trapkit/f.parquet"),
])
def test_bad_features_destinations_fail_before_any_work(samples_dir, tiny_onnx_path, tmp_path, capsys, features,
                                                        fragment):
    (tmp_path / "folder.parquet").mkdir()
    target = features if features.startswith("/") else str(tmp_path / features)
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections",
                 str(samples_dir / "md_v5a_detections.json"), "--out", str(tmp_path / "out.json"),
                 "--features", target])
    assert code == 1
    _one_line_error(capsys, fragment)
    assert not (tmp_path / "out.json").exists()


def test_a_model_without_an_embedding_output_is_refused_before_work(tiny_onnx_path, samples_dir, tmp_path):
    import onnx

    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.serve.runtime import open_runtime

    proto = onnx.load(str(tiny_onnx_path))
    (embedding,) = [o for o in proto.graph.output if o.name == "embedding"]
    proto.graph.output.remove(embedding)  # a graph made by other tools: probabilities only
    onnx.save(proto, str(tmp_path / "probs_only.onnx"))
    with open_runtime(tmp_path / "probs_only.onnx") as rt:
        assert rt.embedding_size is None and rt.predict(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 5)
        with pytest.raises(TrapkitError, match="has no 'embedding' output"):
            rt.predict(np.zeros((1, 32, 32, 3), np.uint8), embedding=True)
        with pytest.raises(TrapkitError, match="gives no 'embedding' output"):
            classify_images(ClassifyPaths(samples_dir, tmp_path / "o.json", samples_dir / "md_v5a_detections.json",
                                          features=tmp_path / "f.parquet"), rt)
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.json.checkpoint.json").exists()


def test_umap_map_without_umap_is_one_line(tiny_tables, tmp_path, capsys):
    try:
        import umap  # noqa: F401
    except ImportError:
        assert main(["features", str(tiny_tables[0]), "--out", str(tmp_path / "x"), "--map", "umap"]) == 1
        _one_line_error(capsys, "--map umap needs umap-learn")
    else:
        assert main(["features", str(tiny_tables[0]), "--out", str(tmp_path / "x"), "--map", "umap"]) == 0
        assert json.loads((tmp_path / "x" / "summary.json").read_text())["map"] == "UMAP"
