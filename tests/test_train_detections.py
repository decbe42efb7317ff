"""`trapkit al` on MegaDetector detections: every qualifying detection is one item, cropped exactly as
`trapkit classify` crops it, labelled per image or per detection, selected one per sequence."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from train_helpers import FAST, detection_doc, detection_flags, make_detection_trees, make_trees

from trapkit.answers import WRONG_BOX, read_answers
from trapkit.app.cli import main
from trapkit.errors import TrapkitError
from trapkit.train import labels
from trapkit.train.run import Run


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    return make_detection_trees(tmp_path_factory.mktemp("det_trees"))


@pytest.fixture(scope="module")
def initialised(trees, tmp_path_factory):
    run = tmp_path_factory.mktemp("det_run") / "run"
    assert main(["al", "init", str(run), *detection_flags(trees)]) == 0
    return run


@pytest.fixture
def run(initialised, tmp_path):
    return shutil.copytree(initialised, tmp_path / "run")


def _pool(df):
    return df[df["split"] == "pool"]


def test_every_qualifying_detection_is_one_item_with_its_box_time_and_sequence(run, trees, capsys):
    r = Run(run)
    df = r.load_manifest()
    doc = json.loads(trees["pool_md"].read_text())
    boxes = {(im["file"], j): d["bbox"] for im in doc["images"] for j, d in enumerate(im["detections"])}
    pool = _pool(df)
    assert len(pool) == sum(trees["detections"].values()) == 24  # 18 frames, 6 of them with two animals
    assert set(pool["path"]) == set(trees["truth"])  # the faint, person-only and empty frames stay out
    for p, d, b in zip(pool["path"], pool["detection"], pool["bbox"]):
        assert [float(v) for v in b.split()] == boxes[(p, int(d))]  # exactly the file's numbers
    assert pool["time"].str.startswith("2024:05:01").all()  # EXIF times, for sequences
    seed = df[df["split"] == "seed"]
    assert len(seed) == 9 and (seed["detection"] == "0").all()
    assert (seed["label"] == seed["path"].str.split("/").str[0]).all()  # each detection takes its class folder
    spec = json.loads((r.model_dir / "spec.json").read_text())
    assert (spec["detection_threshold"], spec["detection_categories"], spec["crop_margin"], spec["interpolation"]) \
        == (0.1, ["animal"], 0.1, "bilinear")  # the crop policy travels with the model: classify's defaults
    assert main(["al", "status", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pool_images_without_detections"] == 3 and status["pool_unlabelled"] == 24
    assert status["history"][0]["asked"] == 4 and status["history"][0]["asked_sequences"] == 4
    assert main(["al", "status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "3 pool image(s) have no detection at or above the threshold" in out
    assert "round 1: 4 item(s) from 4 sequence(s)" in out


def test_requests_are_one_row_per_image_and_the_guesses_list_each_detection(run, trees):
    r = Run(run)
    images, selected = labels.read_request(r.request_path(1))
    assert len(images) == 18 and len(images) == len(set(images))  # Timelapse: one row per image
    raw = r.request_path(1).read_text().splitlines()
    assert raw[0] == "File,RelativePath,Selected"
    with open(r.guesses_path(1), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["File", "RelativePath", "Detection", "X", "Y", "Width", "Height", "Guess", "Confidence"]
    assert len(rows) == 4 and {f"{g['RelativePath']}/{g['File']}" for g in rows} == selected
    items = labels.current_request(run)
    assert [(i.path, i.detection) for i in items] == sorted((f"{g['RelativePath']}/{g['File']}", int(g["Detection"]))
                                                           for g in rows)
    doc = json.loads(trees["pool_md"].read_text())
    boxes = {(im["file"], j): d["bbox"] for im in doc["images"] for j, d in enumerate(im["detections"])}
    assert all(list(i.bbox) == boxes[i.key] for i in items) and all(i.guess in ("bear", "cattle", "dog") for i in items)


def test_each_round_writes_what_timelapse_needs_to_show_the_question(run, trees):
    """The classes as a Choice list, and a MegaDetector file of exactly the asked-about boxes (the detector's
    category and confidence, the model's guess), which the megadetector package validates."""
    from classify_helpers import megadetector_validate

    r = Run(run)
    assert r.choices_path(1).read_text().splitlines() == ["bear", "cattle", "dog", WRONG_BOX]
    megadetector_validate(r.round_detections_path(1))
    asked = json.loads(r.round_detections_path(1).read_text())
    source = json.loads(trees["pool_md"].read_text())
    original = {(im["file"], j): d for im in source["images"] for j, d in enumerate(im["detections"])}
    items = labels.current_request(run)
    got = {}
    for im in asked["images"]:
        for det in im["detections"]:
            got.setdefault(im["file"], []).append(det)
    assert sum(len(v) for v in got.values()) == len(items)
    names = asked["classification_categories"]
    for item in items:
        det = next(d for d in got[item.path] if d["bbox"] == list(item.bbox))
        want = original[item.key]
        assert (det["conf"], asked["detection_categories"][det["category"]]) == (want["conf"], "animal")
        assert names[det["classifications"][0][0]] == item.guess


def test_one_item_per_sequence_unless_the_pool_runs_out():
    from trapkit.train.strategies import Pool, select_per_sequence

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40).astype(np.float32)
    emb = rng.normal(size=(40, 4)).astype(np.float32)
    sequence = np.repeat(np.arange(10), 4)  # 10 bursts of 4 items
    pool = Pool(probs, emb, np.arange(8, 40), np.arange(8), np.array([3, 3, 2]))
    for strategy in ("margin", "uniform", "kcenter", "badge", "cluster_margin", "balanced_margin"):
        picked = select_per_sequence(strategy, pool, 6, sequence, taken=np.array([8]), seed=1)
        assert len(picked) == 6 and len(set(sequence[picked])) == 6 and 2 not in sequence[picked]
    picked = select_per_sequence("margin", pool, 12, sequence, taken=np.array([8]))
    # 7 bursts are left besides the taken one's: one item from each first, then the rest from any.
    assert len(picked) == 12 == len(set(picked.tolist()))
    assert sorted(sequence[picked[:7]]) == list(range(3, 10))


def test_sequences_are_the_grouping_classify_smoothing_uses():
    from trapkit.sequences import sequence_ids
    from trapkit.serve.smoothing import sequences

    rng = np.random.default_rng(3)
    files = [f"cam_{rng.integers(3)}/img_{i}.jpg" for i in range(60)]
    times = [None if rng.random() < 0.2 else f"2024:05:01 10:{rng.integers(0, 30):02d}:{rng.integers(0, 60):02d}"
             for _ in files]
    ids = sequence_ids(files, times, 60.0)
    groups = sequences([{"file": f} for f in files], dict(enumerate(times)), 60.0)
    assert sorted(sorted(i for i in range(60) if ids[i] == s) for s in set(ids)) == sorted(map(sorted, groups))


def _manifest(rows) -> pd.DataFrame:
    df = pd.DataFrame([("pool", "unlabelled", p, str(d) if d is not None else "", "0 0 1 1" if d is not None else "",
                        "", -1, "ok", "", "", 1, "", "") for p, d in rows],
                      columns=["split", "root", "path", "detection", "bbox", "label", "label_round", "status",
                               "reason", "time", "added_round", "prior_guess", "prior_confidence"])
    return df


def _answers(tmp_path, rows, name="a.csv"):
    path = tmp_path / name
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["File", "RelativePath", "Detection", "Species"], *rows])
    return read_answers(path)


def test_image_answers_label_the_selected_detections_and_detection_answers_one(tmp_path):
    df = _manifest([("cam/a.jpg", 0), ("cam/a.jpg", 1), ("cam/a.jpg", 2), ("cam/b.jpg", 0), ("cam/b.jpg", 3)])
    answers = _answers(tmp_path, [["a.jpg", "cam", "", "bear"], ["a.jpg", "cam", "2", WRONG_BOX],
                                  ["b.jpg", "cam", "", "dog"]])
    report = labels.ingest(df, answers, ["bear", "dog"], {"cam/a.jpg": {0, 2}}, 2)
    # a.jpg: the image answer labels its selected detections 0 and 2, and the detection's own answer wins on 2;
    # b.jpg was not selected: its image answer labels every item of it (both kept as unselected labels).
    assert df["label"].tolist() == ["bear", "", WRONG_BOX, "dog", "dog"]
    assert (report.new, report.unselected, report.wrong_boxes) == (4, 2, 1)
    from trapkit.train.loop import head_classes
    from trapkit.train.run import trained_mask

    assert head_classes(("bear", "dog"), df) == ("bear", "dog")  # WRONG_BOX is never a class
    assert trained_mask(df).tolist() == [True, False, False, True, True]


def test_answers_that_do_not_fit_the_items_are_refused_in_one_line(tmp_path):
    df = _manifest([("cam/a.jpg", 0), ("cam/a.jpg", 2)])
    for rows, without, message in (
        ([["faint.jpg", "cam", "", "bear"]], {"cam/faint.jpg"},
         r"images with no detection at or above the run's threshold .*cam/faint\.jpg"),
        ([["nope.jpg", "cam", "", "bear"]], set(), r"not in the pool \(a\.csv line 2: cam/nope\.jpg\)"),
        ([["a.jpg", "cam", "0", "bear"], ["a.jpg", "cam", "0", "dog"]], set(), "two different answers"),
    ):
        with pytest.raises(TrapkitError, match=message):
            labels.ingest(df, _answers(tmp_path, rows), ["bear", "dog"], {}, 2, without_items=without)
        assert (df["label"] == "").all()  # all or nothing
    whole = _manifest([("cam/a.jpg", None)])
    with pytest.raises(TrapkitError, match="one item has two different answers"):
        labels.ingest(whole, _answers(tmp_path, [["a.jpg", "cam", "0", "bear"], ["a.jpg", "cam", "1", "dog"]]),
                      ["bear", "dog"], {}, 2)
    with pytest.raises(TrapkitError, match=r"a\.csv line 2: Detection 'first' is not a detection index"):
        _answers(tmp_path, [["a.jpg", "cam", "first", "bear"]])
    with pytest.raises(TrapkitError, match="a.csv line 2: Detection '\u0660' is not a detection index"):
        _answers(tmp_path, [["a.jpg", "cam", "\u0660", "bear"]])  # an Arabic-Indic zero is not the index 0


def test_answers_about_detections_below_the_runs_threshold_are_left_out_and_counted(tmp_path):
    """A review of a classify run with a lower threshold answers detections that are not items of the run: the
    rest of its answers are taken, and those are counted, not refused as a whole."""
    df = _manifest([("cam/a.jpg", 0), ("cam/a.jpg", 2), ("cam/b.jpg", 0)])
    answers = _answers(tmp_path, [["a.jpg", "cam", "0", "bear"], ["a.jpg", "cam", "1", "dog"],
                                  ["a.jpg", "cam", "7", "dog"], ["b.jpg", "cam", "0", "dog"]])
    report = labels.ingest(df, answers, ["bear", "dog"], {}, 2)
    assert df["label"].tolist() == ["bear", "", "dog"]
    assert (report.new, report.not_items) == (2, 2) and "2 about detections that are not items" in report.summary()


def test_a_whole_image_run_takes_its_images_from_detection_answers(tmp_path):
    """The review page answers per detection; in a run on whole images each answer speaks for its image."""
    df = _manifest([("cam/a.jpg", None), ("cam/b.jpg", None), ("cam/c.jpg", None), ("cam/d.jpg", None)])
    answers = _answers(tmp_path, [["a.jpg", "cam", "0", WRONG_BOX], ["a.jpg", "cam", "1", "bear"],  # a species wins
                                  ["b.jpg", "cam", "0", WRONG_BOX],  # nothing but wrong boxes: the image is empty
                                  ["c.jpg", "cam", "2", "dog"], ["c.jpg", "cam", "", "bear"],  # the image's answer wins
                                  ["d.jpg", "cam", "0", "dog"], ["d.jpg", "cam", "1", "dog"]])
    labels.ingest(df, answers, ["bear", "dog"], {}, 2)
    assert df["label"].tolist() == ["bear", WRONG_BOX, "bear", "dog"]


def test_the_page_api_serves_detections_and_takes_per_detection_answers(run, trees):
    items = labels.current_request(run)
    first, second = items[0], items[1]
    labels.save_answers(run, {first.key: trees["truth"][first.path], second.path: WRONG_BOX})
    answered = {i.key: i.answered for i in labels.current_request(run)}
    assert answered[first.key] == trees["truth"][first.path] and answered[second.key] == WRONG_BOX
    saved = read_answers(labels.page_answers_path(run))
    assert {(a.path, a.detection, a.species) for a in saved} == {
        (first.path, first.detection, trees["truth"][first.path]), (second.path, None, WRONG_BOX)}
    other = next(j for j in range(3) if (first.path, j) not in {i.key for i in items})
    with pytest.raises(TrapkitError, match=f"not selected in the current request: {first.path} detection {other}"):
        labels.save_answers(run, {(first.path, other): "bear"})
    assert main(["al", "next", str(run)]) == 0
    df = Run(run).load_manifest()
    labelled = _pool(df)[_pool(df)["label"] != ""]
    assert set(zip(labelled["path"], labelled["detection"].astype(int), labelled["label"])) == {
        (first.path, first.detection, trees["truth"][first.path]), (second.path, second.detection, WRONG_BOX)}
    assert Run(run).load_state().classes == ("bear", "cattle", "dog")


def test_crops_the_embedder_sees_equal_what_classify_feeds_the_graph(run, trees, tmp_path):
    """Byte for byte: `al` (embedding) and `trapkit classify` (the exported ONNX graph) see the same crops."""
    import torch

    from trapkit.export.onnx_export import export_onnx, load_source
    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.serve.runtime import open_runtime
    from trapkit.serve.settings import ClassifySettings
    from trapkit.train import embed
    from trapkit.train.model import load_model

    r = Run(run)
    df = r.load_manifest()
    model = load_model(r.model_dir)
    seen = []
    normalize = model.normalize

    def recording(images: torch.Tensor) -> torch.Tensor:  # (n, S, S, 3) uint8, what the embedder is fed
        seen.append(images.numpy().copy())
        return normalize(images)

    model.normalize = recording
    pool = np.flatnonzero((df["split"] == "pool").to_numpy())
    items = r.items(df)
    embed.extract(model, [items[i] for i in pool], tmp_path / "emb.npy", batch_size=5, workers=2)
    al_crops = dict(zip(zip(df["path"].to_numpy()[pool], df["detection"].to_numpy()[pool].astype(int)),
                        np.concatenate(seen)))

    class Recording:
        """The real onnxruntime runtime, recording every batch it is given."""

        def __init__(self, inner):
            self.inner, self.spec, self.name, self.batches = inner, inner.spec, inner.name, []

        def predict(self, batch):
            self.batches.append(batch.copy())
            return self.inner.predict(batch)

    onnx = export_onnx(load_source(r.model_dir), tmp_path / "model.onnx").path
    runtime = Recording(open_runtime(onnx))
    classify_images(ClassifyPaths(images_dir=trees["pool"], out=tmp_path / "out.json", detections=trees["pool_md"]),
                    runtime, ClassifySettings(batch_size=7, workers=2))  # the spec's crop policy, as al used it
    doc = json.loads(trees["pool_md"].read_text())
    order = [(im["file"], j) for im in doc["images"] for j, d in enumerate(im["detections"])
             if d["category"] == "1" and d["conf"] >= 0.1]
    classify_crops = dict(zip(order, np.concatenate(runtime.batches)))
    assert set(classify_crops) == set(al_crops) and len(al_crops) == 24
    for key, crop in al_crops.items():
        assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
        assert crop.tobytes() == classify_crops[key].tobytes(), key


def test_bad_detection_inputs_get_one_line_and_write_nothing(trees, tmp_path, capsys):
    run = tmp_path / "run"

    def refused(flags, message):
        assert main(["al", "init", str(run), *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not run.exists()  # refused before the run folder is made

    base = detection_flags(trees)

    def swap(flag, value):
        flags = list(base)
        flags[flags.index(flag) + 1] = str(value)
        return flags

    refused(swap("--unlabelled", trees["labelled"]),
            f"18 of the 18 images with detections in {trees['pool_md']} are not under --unlabelled "
            f"{trees['labelled']} (cam_b/bear_0_0.jpg, cam_b/bear_0_1.jpg, cam_b/bear_0_2.jpg and 15 more)")
    doc = json.loads(trees["pool_md"].read_text())
    doc["images"][4]["detections"][0]["bbox"] = [0.9, 0.1, 0.3, 0.2]  # reaches x = 1.2
    bad = tmp_path / "outside.json"
    bad.write_text(json.dumps(doc))
    refused(swap("--detections", bad), f"1 detection box(es) in {bad} reach outside the image "
                                       f"({doc['images'][4]['file']} detection 0 [0.9, 0.1, 0.3, 0.2])")
    refused(base + ["--categories", "animals"], "detection category 'animals' is not in the detections file")
    refused(base + ["--threshold", "0.99"], f"--seed-detections {trees['seed']} has no detections at or above")
    faint = tmp_path / "faint.json"
    faint.write_text(json.dumps(detection_doc([{"file": "cam_a/faint.jpg", "detections": [
        {"category": "1", "conf": 0.05, "bbox": [0.1, 0.1, 0.2, 0.2]}]}])))
    refused(swap("--detections", faint), f"no detection in {faint} is at or above --threshold 0.1 in categories "
                                         "animal; lower --threshold or check --categories")
    refused(base + ["--threshold", "1.5"], "detection threshold 1.5 is out of range")
    no_pool_md = [f for f in base if f not in ("--detections", str(trees["pool_md"]))]
    refused(no_pool_md, "--seed-detections, --validation-detections only apply with --detections POOL_MD.json")
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(detection_doc([{"file": "bear/bear_0.jpg", "detections": []}])))
    refused(swap("--seed-detections", flat), f"--seed-detections {flat} has no detections at or above the threshold")
    unicode_bad = tmp_path / "surrogate.json"
    unicode_bad.write_text(json.dumps(detection_doc([{"file": "cam_a/caf\udce9.jpg", "detections": []}])))
    refused(swap("--detections", unicode_bad), "file name that is not valid Unicode text")


def test_seasons_join_with_their_detections_and_bad_season_flags_are_one_line(run, trees, tmp_path, capsys):
    r = Run(run)
    before = r.manifest_path.read_bytes()

    def refused(flags, message):
        assert main(["al", "next", str(run), *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert r.manifest_path.read_bytes() == before

    outside = shutil.copytree(trees["pool"] / "cam_a", tmp_path / "season")
    refused(["--add-pool", str(outside), "--detections", str(trees["pool_md"])], f"are not under --add-pool {outside}")
    refused(["--add-pool", str(trees["pool"] / "cam_a")], "add the season's file with --add-pool")
    refused(["--detections", str(trees["pool_md"])], "--detections on 'al next' is the new season's file")
    refused(["--rescan"], "--rescan finds new image files, but this run's items are detections")


def test_answers_that_do_not_fit_the_run_are_one_line_through_al_next(run, tmp_path, capsys):
    r = Run(run)
    before = r.manifest_path.read_bytes()
    item = labels.current_request(run)[0]
    for rows, message in (
        ([["faint.jpg", "cam_a", "", "dog"]], "answers name images with no detection at or above the run's threshold "
                                              "in its categories, so not in the pool (faint.csv line 2: cam_a/faint.jpg)"),
        ([[item.file, item.relative_path, "9", "dog"]], "no new labels"),  # a detection that is not an item: left out
    ):
        path = tmp_path / "faint.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["File", "RelativePath", "Detection", "Species"], *rows])
        assert main(["al", "next", str(run), "--labels", str(path)]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert r.manifest_path.read_bytes() == before and r.load_state().round == 1


@pytest.mark.slow
def test_a_season_from_classify_output_joins_with_its_classifications_as_first_guesses(run, trees, tmp_path):
    from trapkit.export.onnx_export import export_onnx, load_source
    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.serve.runtime import open_runtime

    r = Run(run)
    season = trees["pool"] / "season2"
    pool = shutil.copytree(trees["pool"], tmp_path / "pool")  # the run's pool, with a new season inside it
    settings = json.loads(r.settings_path.read_text())
    settings["data"]["unlabelled"] = str(pool)
    r.settings_path.write_text(json.dumps(settings))
    season = pool / "season2"
    make = make_detection_trees(tmp_path / "new", bursts_per_class=1, seed=7)
    shutil.copytree(make["pool"], season)
    onnx = export_onnx(load_source(r.model_dir), tmp_path / "model.onnx").path
    classified = tmp_path / "season2.json"
    classify_images(ClassifyPaths(images_dir=season, out=classified, detections=make["pool_md"]), open_runtime(onnx))
    assert main(["al", "next", str(run), "--add-pool", str(season), "--detections", str(classified),
                 "--batch", "40"]) == 0  # no labels: the new season alone makes a round
    df = r.load_manifest()
    added = df[df["added_round"] == 2]
    assert len(added) == sum(make["detections"].values()) and added["path"].str.startswith("season2/").all()
    out = json.loads(classified.read_text())
    names = out["classification_categories"]
    prior = {(f"season2/{im['file']}", j): names[d["classifications"][0][0]] for im in out["images"]
             for j, d in enumerate(im["detections"]) if d.get("classifications")}
    assert dict(zip(zip(added["path"], added["detection"].astype(int)), added["prior_guess"])) == prior
    guesses = {(g.path, g.detection): g.guess for g in labels.read_guesses(r.guesses_path(2))}
    assert {k: guesses[k] for k in prior} == prior  # the classifier's guesses are the first ones shown
    assert r.load_state().images_without_detections == 6
    assert str(season) in json.loads(r.settings_path.read_text())["data"]["seasons"]


@pytest.mark.slow
def test_simulate_on_detections_with_either_oracle_form_and_a_seed_of_crops(trees, tmp_path, capsys):
    crops = make_trees(tmp_path / "crops", seed_per_class=3, val_per_class=2, pool_per_class=1)
    runs = {}
    for form in ("oracle", "oracle_detections"):
        out = tmp_path / form
        flags = ["--labelled", str(crops["labelled"]), "--validation", str(crops["validation"]),  # crops already made
                 "--unlabelled", str(trees["pool"]), "--detections", str(trees["pool_md"]), "--batch", "3", *FAST]
        assert main(["al", "simulate", "--oracle", str(trees[form]), "--budget", "6", "--out", str(out),
                     *flags]) == 0
        lines = (out / "curve.csv").read_text().splitlines()
        assert [int(x.split(",")[0]) for x in lines[1:]] == [9, 12, 15]
        df = Run(out).load_manifest()
        assert (df.loc[df["split"] == "seed", "detection"] == "").all()  # the mewc-snip layout: whole images
        pool = _pool(df)
        labelled = pool[pool["label"] != ""]
        assert (labelled["label"] == labelled["path"].map(trees["truth"])).all()
        runs[form] = sorted(zip(labelled["path"], labelled["detection"]))
    assert runs["oracle"] == runs["oracle_detections"] and len(runs["oracle"]) == 6
    capsys.readouterr()


def test_an_image_is_decoded_once_for_all_its_detections(samples_dir, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from trapkit.prepare import Preprocessing, prepare_image
    from trapkit.train import embed
    from trapkit.train.run import Item

    doc = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    cattle = next(im for im in doc["images"] if im["file"] == "domestic_cattle.jpg")
    boxes = [tuple(d["bbox"]) for d in cattle["detections"]]
    items = [Item(samples_dir / "domestic_cattle.jpg", b) for b in boxes] + [Item(samples_dir / "ocelot.jpg")]
    calls = []

    def counting(path, boxes, prep):  # the real preparation path, counted
        calls.append(path.name)
        return prepare_image(path, boxes, prep)

    monkeypatch.setattr(embed, "prepare_image", counting)
    prep = Preprocessing(input_size=48)
    with ThreadPoolExecutor(2) as pool:
        batch = embed.load_items(items, prep, pool)
    assert sorted(calls) == ["domestic_cattle.jpg", "ocelot.jpg"] and batch.ok == [True] * 4
    expected = np.concatenate([prepare_image(samples_dir / "domestic_cattle.jpg", [list(b) for b in boxes], prep).crops,
                               prepare_image(samples_dir / "ocelot.jpg", None, prep).crops])
    assert batch.images.tobytes() == expected.tobytes()


def test_a_season_is_placed_wherever_it_lies(tmp_path):
    """Inside the pool folder a season keeps its path there; anywhere else (a link into the pool to a drive
    included) it gets a root of its own and its folder's name as the prefix, made unique in the run."""
    import pandas as pd

    from trapkit.train.loop import _season_place
    from trapkit.train.settings import RunSettings

    pool, drive = tmp_path / "pool", tmp_path / "drive"
    for folder in (pool / "2024" / "sd1", drive / "2025", drive / "cam_a"):
        folder.mkdir(parents=True)
    (pool / "link").symlink_to(drive / "2025", target_is_directory=True)
    settings = RunSettings()
    settings.data.unlabelled = str(pool)
    df = pd.DataFrame({"split": ["pool"], "path": ["cam_a/x.jpg"]})
    assert _season_place(settings, df, pool / "2024" / "sd1") == ("2024/sd1", "unlabelled")
    assert _season_place(settings, df, pool / "link") == ("link", "season:link")
    assert _season_place(settings, df, drive / "2025") == ("2025", "season:2025")
    assert _season_place(settings, df, drive / "cam_a") == ("cam_a-2", "season:cam_a-2")  # the pool has cam_a/
