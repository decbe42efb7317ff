"""`trapkit classify` end to end with the tiny real ONNX model and the bundled camera-trap photos."""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil

import pytest

from classify_helpers import animal, megadetector_validate, onnx_with_taxonomy, write_detections
from trapkit.app.cli import main
from trapkit.serve.classify import ClassifyPaths, ClassifySettings, classify_images
from trapkit.serve.runtime import open_runtime


def _classify(samples_dir, tiny_onnx_path, tmp_path, *extra) -> tuple[int, dict]:
    out = tmp_path / "out.json"
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections",
                 str(samples_dir / "md_v5a_detections.json"), "--out", str(out), *extra])
    return code, json.loads(out.read_text()) if out.exists() else None


def _strip_ours(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for key in ("classification_categories", "classification_category_descriptions"):
        doc.pop(key, None)
    for key in ("classifier", "classification_completion_time", "classifier_metadata"):
        doc["info"].pop(key, None)
    for im in doc["images"]:
        for det in im.get("detections") or ():
            det.pop("classifications", None)
    return doc


def test_output_is_megadetector_1_6_and_preserves_the_input(samples_dir, tiny_onnx_path, tmp_path, capsys):
    code, out = _classify(samples_dir, tiny_onnx_path, tmp_path, "--csv", str(tmp_path / "out.csv"), "--top-k", "3")
    assert code == 0
    megadetector_validate(tmp_path / "out.json", samples_dir)
    source = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    assert _strip_ours(out) == source  # everything else carried through untouched
    assert out["info"]["format_version"] == "1.6"
    assert out["classification_categories"] == {"0": "bear", "1": "cattle", "2": "dog", "3": "elephant", "4": "ocelot"}
    assert "classification_category_descriptions" not in out  # the tiny model has no taxonomy
    assert "tiny-test-model" in out["info"]["classifier"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out["info"]["classification_completion_time"])
    classified = 0
    for im in out["images"]:
        for det in im["detections"]:
            wanted = det["category"] == "1" and det["conf"] >= 0.1
            assert ("classifications" in det) == wanted
            if wanted:
                classified += 1
                confs = [c for _, c in det["classifications"]]
                assert len(confs) == 3 and confs == sorted(confs, reverse=True)
                assert all(isinstance(cid, str) for cid, _ in det["classifications"])
    assert classified == 13
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == classified * 3
    assert rows[0]["file"] == "african_elephants.jpg" and rows[0]["rank"] == "1" and rows[0]["bbox"].startswith("[")
    assert rows[0]["detection_category"] == "animal" and rows[0]["label"] in out["classification_categories"].values()
    printed = capsys.readouterr().out
    assert "13 detections classified in 5 of 10 images; 0 images failed" in printed


def test_taxonomy_becomes_category_descriptions(samples_dir, tiny_onnx_path, tmp_path):
    taxonomy = tuple(f";mammalia;order;family;genus;{x};{x}" for x in ("bear", "cattle", "dog", "elephant", "ocelot"))
    model = onnx_with_taxonomy(tiny_onnx_path, tmp_path / "tax.onnx", taxonomy)
    code, out = _classify(samples_dir, model, tmp_path, "--categories", "animal", "person", "--threshold", "0.5")
    assert code == 0
    assert out["classification_category_descriptions"]["4"] == taxonomy[4]
    classified = [d for im in out["images"] for d in im["detections"] if "classifications" in d]
    assert len(classified) == 13 and all(d["conf"] >= 0.5 for d in classified)  # 12 animals + 1 person above 0.5
    assert any(d["category"] == "2" for d in classified)
    megadetector_validate(tmp_path / "out.json")


def test_batched_across_images_equals_one_crop_at_a_time(samples_dir, tiny_onnx_path, tmp_path):
    results = []
    for n, (batch, workers) in enumerate([(1, 1), (7, 3)]):
        paths = ClassifyPaths(samples_dir, tmp_path / f"out{n}.json", samples_dir / "md_v5a_detections.json")
        with open_runtime(tiny_onnx_path) as runtime:
            classify_images(paths, runtime, ClassifySettings(batch_size=batch, workers=workers, top_k=5))
        results.append(json.loads(paths.out.read_text()))
    one, batched = ([dict(c) for im in r["images"] for d in im["detections"] for c in [d.get("classifications", [])]]
                    for r in results)
    assert len(one) == len(batched)
    for a, b in zip(one, batched):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 2e-4 for k in a)


def test_whole_images_without_detections(samples_dir, tiny_onnx_path, tmp_path):
    images = tmp_path / "plankton"
    (images / "tow1").mkdir(parents=True)
    for name in ("ocelot.jpg", "blank.jpg"):
        shutil.copy(samples_dir / name, images / "tow1" / name)
    shutil.copy(samples_dir / "human.jpg", images / "human.jpg")
    out = tmp_path / "out.json"
    assert main(["classify", str(images), "--model", str(tiny_onnx_path), "--out", str(out), "--top-k", "2"]) == 0
    doc = json.loads(out.read_text())
    megadetector_validate(out, images)
    assert [im["file"] for im in doc["images"]] == ["human.jpg", "tow1/blank.jpg", "tow1/ocelot.jpg"]
    for im in doc["images"]:
        (det,) = im["detections"]
        assert det["bbox"] == [0.0, 0.0, 1.0, 1.0] and len(det["classifications"]) == 2


def test_bad_images_are_recorded_and_the_run_goes_on(samples_copy, tiny_onnx_path, tmp_path, capsys):
    (samples_copy / "empty.jpg").write_bytes(b"")
    (samples_copy / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    (samples_copy / "text.jpg").write_text("a text file with an image name")
    data = (samples_copy / "ocelot.jpg").read_bytes()
    (samples_copy / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "outside.jpg").write_bytes(data)  # exists, but outside the image folder
    names = ["ocelot.jpg", "missing.jpg", "empty.jpg", "corrupt.jpg", "text.jpg", "truncated.jpg",
             str(tmp_path / "outside.jpg"), "../outside.jpg"]
    video = {"file": "clip.mp4", "frame_rate": 30.0, "frames_processed": [0],
             "detections": [{**animal(), "frame_number": 0}]}  # MegaDetector video results, for a video not there
    md = write_detections(tmp_path / "md.json", [{"file": n, "detections": [animal()]} for n in names] + [video])
    out, table = tmp_path / "out.json", tmp_path / "out.csv"
    code = main(["classify", str(samples_copy), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(out), "--csv", str(table)])
    assert code == 0
    doc = json.loads(out.read_text())
    megadetector_validate(out)
    by_file = {im["file"]: im for im in doc["images"]}
    assert by_file["clip.mp4"] == {**video, "classification_failure": "video missing"}  # boxes kept
    for name in ("ocelot.jpg", "truncated.jpg"):
        assert by_file[name].get("failure") is None and by_file[name]["detections"][0]["classifications"]
    # Short fixed codes, countable, with no local path in them; the details went to the log.
    expected = {"missing.jpg": "image missing", "empty.jpg": "image empty", "corrupt.jpg": "image unreadable",
                "text.jpg": "image unreadable",
                str(tmp_path / "outside.jpg"): "path outside image folder", "../outside.jpg": "path outside image folder"}
    for name, code in expected.items():
        # The detector's boxes are kept (no classifications), so no MegaDetector output is lost.
        assert by_file[name]["detections"] == [animal()] and "failure" not in by_file[name], by_file[name]
        assert by_file[name]["classification_failure"] == code
    assert str(samples_copy) not in out.read_text()
    rows = list(csv.DictReader(table.open()))
    assert any(r["file"] == "truncated.jpg" and "truncated" in r["warning"] for r in rows)
    assert sum(1 for r in rows if r["failure"]) == 7
    printed = capsys.readouterr().out
    assert "7 images failed; 1 classified with warnings" in printed


def test_sort_into_copies_or_links_by_top_species(samples_dir, tiny_onnx_path, tmp_path):
    code, out = _classify(samples_dir, tiny_onnx_path, tmp_path, "--sort-into", str(tmp_path / "sorted"))
    assert code == 0
    labels = out["classification_categories"]
    for im in out["images"]:
        dets = [d for d in im["detections"] if "classifications" in d]
        folder = labels[max(dets, key=lambda d: d["conf"])["classifications"][0][0]] if dets else "_empty"
        target = tmp_path / "sorted" / folder / im["file"]
        assert target.is_file() and not target.is_symlink()
        assert target.read_bytes() == (samples_dir / im["file"]).read_bytes()
    code, _ = _classify(samples_dir, tiny_onnx_path, tmp_path, "--sort-into", str(tmp_path / "linked"), "--link")
    assert code == 0
    links = list((tmp_path / "linked").rglob("*.jpg"))
    assert len(links) == 10 and all(p.is_symlink() for p in links)


def test_sort_into_puts_videos_by_species_and_other_files_in_not_classified(samples_copy, tiny_onnx_path, tmp_path):
    from video_helpers import encode, photo_frames

    encode(samples_copy / "clip.mp4", photo_frames(3))
    (samples_copy / "junk.mp4").write_bytes(b"\0\0\0\x18ftypmp42")  # cannot be decoded: failed, left out
    (samples_copy / "call.wav").write_bytes(b"RIFF")  # neither image nor video: never classified
    entries = [{"file": name, "frame_rate": 30.0, "frames_processed": [0],
                "detections": [{**animal(), "frame_number": 0}]} for name in ("clip.mp4", "junk.mp4")]
    md = write_detections(tmp_path / "md.json", [{"file": "ocelot.jpg", "detections": [animal()]},
                                                 {"file": "blank.jpg", "detections": []},
                                                 {"file": "call.wav", "detections": [animal()]}, *entries])
    sorted_dir = tmp_path / "sorted"
    assert main(["classify", str(samples_copy), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(tmp_path / "out.json"), "--sort-into", str(sorted_dir)]) == 0
    placed = sorted(p.relative_to(sorted_dir).as_posix() for p in sorted_dir.rglob("*") if p.is_file())
    assert "_not_classified/call.wav" in placed and "_empty/blank.jpg" in placed
    assert [p for p in placed if p.endswith(".mp4")] == [p for p in placed if p.endswith("/clip.mp4")]
    assert len(placed) == 4 and not any(p.startswith("_") and p.endswith("clip.mp4") for p in placed)


def test_wrong_images_dir_stops_before_any_work(samples_dir, tiny_onnx_path, tmp_path, capsys):
    md = shutil.copy(samples_dir / "md_v5a_detections.json", tmp_path / "md.json")
    out = tmp_path / "out.json"
    code = main(["classify", str(samples_dir.parent), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(out)])  # the photos are one folder further down
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert "none of the 5 images" in err and "african_elephants.jpg is missing" in err
    assert "probably the wrong folder" in err
    assert not out.exists() and not (tmp_path / "out.json.checkpoint.json").exists()


def test_out_that_is_the_detections_file_is_refused(samples_dir, tiny_onnx_path, tmp_path, capsys):
    md = shutil.copy(samples_dir / "md_v5a_detections.json", tmp_path / "md.json")
    before = md.read_bytes()
    (tmp_path / "sub").mkdir()
    for out in (md, tmp_path / "sub" / ".." / "md.json"):
        code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections", str(md),
                     "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 1 and "\n" not in err and "is the detections file; give a new file name" in err
    assert md.read_bytes() == before


@pytest.mark.parametrize("make_flags, message", [
    (lambda t: ["--out", str(t)], "--out {t} is a folder; give a file name"),
    (lambda t: ["--csv", str(t)], "--csv {t} is a folder; give a file name"),
    (lambda t: ["--out", str(t / "file" / "out.json")], "{t}/file is a file, not a folder"),
    (lambda t: ["--sort-into", "/proc/trapkit-sorted"], "cannot write --sort-into /proc/trapkit-sorted"),
    (lambda t: ["--csv", "/proc/trapkit/out.csv"], "cannot write --csv /proc/trapkit/out.csv"),
    (lambda t: ["--sort-into", str(t / "file")], "--sort-into {t}/file is a file; give a folder"),
])
def test_unwritable_destinations_fail_before_any_work(samples_dir, tiny_onnx_path, tmp_path, capsys, make_flags,
                                                      message):
    (tmp_path / "file").write_text("x")
    flags = make_flags(tmp_path)
    out = [] if "--out" in flags else ["--out", str(tmp_path / "out.json")]
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections",
                 str(samples_dir / "md_v5a_detections.json"), *out, *flags])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and message.format(t=tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no output, no checkpoint


def test_rerun_on_a_smoothed_output_drops_stale_classifications(samples_copy, tiny_onnx_path, tmp_path):
    earlier = [["7", 0.4], ["8", 0.3]]  # ids of an earlier model's categories
    stale = {"classifications": [["8", 0.4]], "classifications_before_smoothing": earlier}
    entries = [{"file": "ocelot.jpg", "detections": [{**animal(), **stale}, {**animal(conf=0.05), **stale}]},
               {"file": "blank.jpg", "detections": [{**animal(), **stale}]}]  # unreadable now: see below
    md = write_detections(tmp_path / "earlier.json", entries)
    doc = json.loads(md.read_text())
    md.write_text(json.dumps({**doc, "classification_categories": {"7": "wolf", "8": "fox"}}))
    (samples_copy / "blank.jpg").write_bytes(b"")
    out = tmp_path / "out.json"
    assert main(["classify", str(samples_copy), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    megadetector_validate(out)
    dets = [d for im in result["images"] for d in im["detections"]]
    assert not any("classifications_before_smoothing" in d for d in dets)
    assert [("classifications" in d) for d in dets] == [True, False, False]  # below threshold; unreadable image
    assert all(c[0] in result["classification_categories"] for c in dets[0]["classifications"])


def test_smooth_flag_runs_end_to_end(samples_dir, tiny_onnx_path, tmp_path):
    code, out = _classify(samples_dir, tiny_onnx_path, tmp_path, "--smooth", "--sequence-gap", "30")
    assert code == 0
    assert out["info"]["classifier_metadata"]["sequence_gap"] == 30
    assert out["info"]["classifier_metadata"]["smoothing"]["mode"] == "sequence"  # --smooth alone
    megadetector_validate(tmp_path / "out.json")


@pytest.mark.parametrize("flags, message", [
    (["--link"], "--link only applies with --sort-into"),
    (["--sequence-gap", "5"], "--sequence-gap only applies with --smooth"),
    (["--batch-size", "0"], "batch-size must be at least 1"),
    (["--margin", "-1"], "crop margin -1.0 is out of range"),
])
def test_bad_flags_are_one_line_errors(samples_dir, tiny_onnx_path, tmp_path, capsys, flags, message):
    code, _ = _classify(samples_dir, tiny_onnx_path, tmp_path, *flags)
    assert code == 1 and message in capsys.readouterr().err


def test_parallelism_defaults_split_the_cores():
    from trapkit.serve.settings import Parallelism

    assert Parallelism.for_cpus(2) == Parallelism(workers=2, concurrency=2, threads=1)
    assert Parallelism.for_cpus(16) == Parallelism(workers=16, concurrency=4, threads=4)
    assert Parallelism.for_cpus(16, workers=3, concurrency=1) == Parallelism(workers=3, concurrency=1, threads=16)


def test_a_debug_log_is_left_beside_the_output(samples_copy, tiny_onnx_path, tmp_path, capsys):
    (samples_copy / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    md = write_detections(tmp_path / "md.json", [{"file": "corrupt.jpg", "detections": [animal()]},
                                                 {"file": "ocelot.jpg", "detections": [animal()]}])
    out = tmp_path / "out.json"
    assert main(["classify", str(samples_copy), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(out)]) == 0
    log_text = (tmp_path / "out.json.log").read_text()
    # The details a shared result leaves out (the local path, the decoder's words) are in the log.
    assert "DEBUG" in log_text and str(samples_copy / "corrupt.jpg") in log_text
    assert "DEBUG" not in capsys.readouterr().err  # the terminal stays as it was
    # A run that fails leaves its traceback in the log, while the terminal gets one line.
    assert main(["classify", str(samples_copy), "--model", str(tmp_path / "nope.onnx"), "--detections", str(md),
                 "--out", str(out)]) == 1
    assert "Traceback" in (tmp_path / "out.json.log").read_text()
    assert "Traceback" not in capsys.readouterr().err


def test_file_names_that_are_not_utf8_are_refused_naming_the_file(samples_copy, tiny_onnx_path, tmp_path, capsys):
    import os

    # A Latin-1 name ("café.jpg" from an old copy tool): bytes that are not UTF-8.
    os.rename(samples_copy / "ocelot.jpg", os.path.join(os.fsencode(samples_copy), b"caf\xe9.jpg"))
    out = tmp_path / "out.json"
    code = main(["classify", str(samples_copy), "--model", str(tiny_onnx_path), "--out", str(out), "--csv",
                 str(tmp_path / "out.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "not valid UTF-8 (e.g. 'caf\\udce9.jpg')" in err and "convmv" in err and "\n" not in err
    assert not out.exists() and not out.with_name("out.json.checkpoint.json").exists()  # refused before any work
    # The same name inside a detections file (JSON may spell it as a lone surrogate) is refused too.
    md = tmp_path / "md.json"
    md.write_text('{"info": {"format_version": "1.6"}, "detection_categories": {"1": "animal"}, '
                  '"images": [{"file": "caf\\udce9.jpg", "detections": []}]}')
    assert main(["classify", str(samples_copy), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(out)]) == 1
    assert "file name that is not valid Unicode text" in capsys.readouterr().err


def test_an_image_with_thousands_of_boxes_is_bounded(samples_dir, tmp_path, caplog):
    from trapkit.detections import MAX_ITEMS_PER_IMAGE, load_detections, qualifying

    boxes = [animal((0.001 * (k % 900), 0.1, 0.05, 0.05), conf=0.2 + 0.7 * k / 10_000) for k in range(10_000)]
    doc = load_detections(write_detections(tmp_path / "md.json", [{"file": "ocelot.jpg", "detections": boxes}]))
    (kept,) = qualifying(doc, 0.1, ["animal"]).values()
    assert len(kept) == MAX_ITEMS_PER_IMAGE and kept == sorted(kept)
    assert min(boxes[j]["conf"] for j in kept) > max(b["conf"] for j, b in enumerate(boxes) if j not in set(kept))
    assert "only the 500 most confident of each are" in caplog.text
