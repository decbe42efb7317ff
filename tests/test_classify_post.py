"""`trapkit classify` after the model, end to end: rollup, allow-list, per-class thresholds, smoothing.

Smoothing parity: MegaDetector's own `smooth_classification_results_image_level` and
`..._sequence_level` run on trapkit's unsmoothed output (with the COCO Camera Traps
sequences trapkit wrote) and must give the same top-1 for every detection as
`--smooth`, on the bundled photos, on a constructed burst with many detections, and
with taxonomy strings (rollup categories included).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from classify_helpers import (
    FITTED_CLASSES, fitted_model, megadetector_module, megadetector_validate, onnx_with_taxonomy, top1,
)
from cli_helpers import one_line_error
from trapkit.app.cli import main
from trapkit.serve.postprocess import build_plan, classify
from trapkit.serve.settings import PostSettings

LABELS = ("bear", "cattle", "dog", "elephant", "ocelot")
TAXONOMY = (
    ";mammalia;carnivora;ursidae;ursus;americanus;american black bear",
    ";mammalia;cetartiodactyla;bovidae;bos;taurus;domestic cattle",
    ";mammalia;carnivora;canidae;canis;lupus familiaris;domestic dog",
    ";mammalia;proboscidea;elephantidae;loxodonta;africana;african elephant",
    ";mammalia;carnivora;felidae;leopardus;pardalis;ocelot",
)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, samples_dir, tmp_path_factory):
    return fitted_model(tiny_model_dir, tmp_path_factory.mktemp("fitted") / "model.onnx", samples_dir)


@pytest.fixture(scope="module")
def fitted_taxonomy(fitted, tmp_path_factory):
    return onnx_with_taxonomy(fitted, tmp_path_factory.mktemp("fitted_tax") / "model.onnx", TAXONOMY)


def _run(images, model, out, *flags, detections=None) -> dict:
    detections = detections or images / "md_v5a_detections.json"
    assert main(["classify", str(images), "--model", str(model), "--detections", str(detections), "--out", str(out),
                 *map(str, flags)]) == 0
    return json.loads(out.read_text())


def _md_smooth(doc: dict, mode: str, cct) -> dict:
    md = megadetector_module("postprocessing.classification_postprocessing")
    if mode in ("image", "both"):
        doc = md.smooth_classification_results_image_level(doc)
    if mode in ("sequence", "both"):
        doc = md.smooth_classification_results_sequence_level(doc, str(cct))
    return doc


def test_the_fitted_model_calls_the_crops_as_asked(fitted, samples_dir, tmp_path):
    out = _run(samples_dir, fitted, tmp_path / "out.json")
    calls = {im["file"]: [int(d["classifications"][0][0]) for d in im["detections"] if "classifications" in d]
             for im in out["images"] if any("classifications" in d for d in im["detections"])}
    assert calls == FITTED_CLASSES


@pytest.mark.parametrize("mode", ["image", "sequence", "both"])
def test_smoothing_matches_megadetector_on_the_bundled_photos(fitted, samples_dir, tmp_path, mode):
    plain = _run(samples_dir, fitted, tmp_path / "plain.json", "--sequences-out", tmp_path / "cct.json")
    ours = _run(samples_dir, fitted, tmp_path / "smoothed.json", "--smooth", mode)
    megadetector_validate(tmp_path / "smoothed.json", samples_dir)
    assert top1(ours) == top1(_md_smooth(plain, mode, tmp_path / "cct.json"))
    changed = {im["file"] for im in ours["images"] for d in im["detections"] if "classifications_before_smoothing" in d}
    # The one "cattle" among the elephants becomes an elephant; every photo is a sequence of its own
    # (other cameras, other days), so sequence level does what image level does.
    assert changed == {"african_elephants.jpg"}


def _burst(samples_dir, folder, shots: list[str]) -> tuple:
    """Copies of bundled photos in `folder`, EXIF times 2 s apart, and their detections file."""
    source = {im["file"]: im for im in json.loads((samples_dir / "md_v5a_detections.json").read_text())["images"]}
    folder.mkdir(parents=True)
    entries = []
    for n, name in enumerate(shots):
        file = f"cam/{n:02d}_{name}"
        (folder / "cam").mkdir(exist_ok=True)
        with Image.open(samples_dir / name) as img:
            exif = img.getexif()
            exif[306] = exif.get_ifd(0x8769)[36867] = f"2024:05:01 10:00:{2 * n:02d}"
            img.save(folder / file, exif=exif, quality=95)
        entries.append({**source[name], "file": file})
    doc = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    (folder / "md.json").write_text(json.dumps({**doc, "images": entries}))
    return folder, folder / "md.json"


def test_a_burst_with_many_detections_is_smoothed_as_megadetector_does(fitted, samples_dir, tmp_path):
    # 10 voting elephants, 2 cattle (one per elephant photo), and a lone dog, bear and ocelot: the lone
    # ones become elephants; the two cattle only at image level (one beside five elephants there).
    shots = ["african_elephants.jpg", "domestic_dog.jpg", "african_elephants.jpg", "american_black_bear.jpg",
             "ocelot.jpg"]
    images, md_json = _burst(samples_dir, tmp_path / "burst", shots)
    cct = tmp_path / "cct.json"
    plain = _run(images, fitted, tmp_path / "plain.json", "--sequences-out", cct, detections=md_json)
    assert len({im["seq_id"] for im in json.loads(cct.read_text())["images"]}) == 1  # one burst
    for mode, changes in (("sequence", 3), ("both", 5)):
        ours = _run(images, fitted, tmp_path / f"{mode}.json", "--smooth", mode, detections=md_json)
        assert top1(ours) == top1(_md_smooth(plain, mode, cct)), mode
        assert sum("classifications_before_smoothing" in d for im in ours["images"] for d in im["detections"]) == changes
    # A gap shorter than the 2 s between shots makes every photo its own sequence.
    _run(images, fitted, tmp_path / "apart.json", "--sequences-out", cct, "--sequence-gap", "1", detections=md_json)
    assert len({im["seq_id"] for im in json.loads(cct.read_text())["images"]}) == len(shots)


def test_rollup_and_smoothing_with_taxonomy_match_megadetector(fitted_taxonomy, samples_dir, tmp_path):
    images, md_json = _burst(samples_dir, tmp_path / "burst", ["african_elephants.jpg", "domestic_cattle.jpg",
                                                             "ocelot.jpg", "domestic_dog.jpg", "american_black_bear.jpg"])
    cct = tmp_path / "cct.json"
    plain = _run(images, fitted_taxonomy, tmp_path / "plain.json", "--rollup", "0.65", "--sequences-out", cct,
                 detections=md_json)
    names, descriptions = plain["classification_categories"], plain["classification_category_descriptions"]
    rolled = {names[d["classifications"][0][0]] for im in plain["images"] for d in im["detections"]
              if "classifications" in d and int(d["classifications"][0][0]) >= len(LABELS)}
    assert rolled and rolled <= {"carnivora", "mammalia", "animal", "cetartiodactyla", "proboscidea"}, rolled
    assert set(names) == set(descriptions) and all(len(t.split(";")) == 7 for t in descriptions.values())
    ours = _run(images, fitted_taxonomy, tmp_path / "both.json", "--rollup", "0.65", "--smooth", "both",
                detections=md_json)
    megadetector_validate(tmp_path / "both.json", images)
    assert top1(ours) == top1(_md_smooth(plain, "both", cct))
    assert any("classifications_before_smoothing" in d for im in ours["images"] for d in im["detections"])


def test_post_processing_uses_each_detections_full_vector(fitted_taxonomy, samples_dir, tmp_path):
    """The run with --rollup/--allow-list/--class-thresholds equals the pure functions applied to the
    full probability vectors (here all 5 classes, written out with --top-k 5)."""
    allow = tmp_path / "allow.csv"
    allow.write_text("latin,common\nbos taurus,cattle\nloxodonta africana,elephant\ncanidae,dog family\n")
    thresholds = tmp_path / "thresholds.csv"
    thresholds.write_text("label,threshold\nelephant,0.7\n")
    flags = ["--rollup", "0.6", "--allow-list", allow, "--class-thresholds", thresholds]
    full = _run(samples_dir, fitted_taxonomy, tmp_path / "full.json", "--top-k", "5")
    ours = _run(samples_dir, fitted_taxonomy, tmp_path / "post.json", "--top-k", "2", *flags)
    megadetector_validate(tmp_path / "post.json", samples_dir)
    plan = build_plan(LABELS, TAXONOMY, PostSettings(0.6, allow, thresholds))
    for a, b in zip(full["images"], ours["images"]):
        for d, e in zip(a["detections"], b["detections"]):
            assert ("classifications" in d) == ("classifications" in e)
            if "classifications" in d:
                probs = np.zeros(len(LABELS), np.float32)
                for cid, conf in d["classifications"]:
                    probs[int(cid)] = conf
                expected = classify(probs, plan, 2)
                assert [c for c, _ in e["classifications"]] == [c for c, _ in expected]
                assert np.allclose([v for _, v in e["classifications"]], [v for _, v in expected], atol=5e-4)
    names = ours["classification_categories"]
    assert "bear" not in names.values() and "dog" not in names.values()  # off the list, never written
    assert {"cattle", "elephant"} <= set(names.values())
    assert ours["info"]["classifier_metadata"]["postprocess"] == {
        "rollup": 0.6, "allow_list": "allow.csv", "class_thresholds": "thresholds.csv"}


def test_class_thresholds_without_taxonomy_say_unknown(fitted, samples_dir, tmp_path):
    thresholds = tmp_path / "t.csv"
    thresholds.write_text("label,threshold\nelephant,0.99\n")
    out = _run(samples_dir, fitted, tmp_path / "out.json", "--class-thresholds", thresholds)
    elephants = next(im for im in out["images"] if im["file"] == "african_elephants.jpg")
    tops = [out["classification_categories"][d["classifications"][0][0]] for d in elephants["detections"]
            if "classifications" in d]
    assert tops.count("unknown") == 6 and tops.count("cattle") == 1
    assert "classification_category_descriptions" not in out
    megadetector_validate(tmp_path / "out.json")


@pytest.mark.parametrize("flags, message", [
    (["--rollup", "1.5"], "--rollup 1.5 is out of range"),
    (["--allow-list", "{t}/allow.csv"], "names no class or taxon of the model (panthera onca)"),
    (["--allow-list", "{t}/missing.csv"], "does not exist"),
    (["--class-thresholds", "{t}/unknown.csv"], "row 2 (lynx) name no class of the model"),
    (["--class-thresholds", "{t}/range.csv"], "row 2 (bear: 1.2) are not confidences in [0, 1]"),
    (["--smooth", "image", "--sequence-gap", "5"], "--sequence-gap only applies with --smooth sequence|both"),
    (["--sequence-gap", "-1", "--sequences-out", "{t}/cct.json"], "--sequence-gap -1 must be 0 seconds or more"),
    (["--sequences-out", "{t}/out.json"], "--out and --sequences-out are the same file"),
    (["--video-out", "{t}"], "--video-out {t} is a folder"),
    (["--frame-sample", "5"], "--frame-sample only applies without --detections"),
])
def test_bad_inputs_are_one_line_errors_and_no_output_is_written(fitted_taxonomy, samples_dir, tmp_path, capsys, flags,
                                                                message):
    (tmp_path / "allow.csv").write_text("latin,common\npanthera onca,jaguar\n")
    (tmp_path / "unknown.csv").write_text("label,threshold\nlynx,0.5\n")
    (tmp_path / "range.csv").write_text("label,threshold\nbear,1.2\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    flags = [f.format(t=tmp_path) for f in flags]
    err = one_line_error(["classify", str(samples_dir), "--model", str(fitted_taxonomy), "--detections",
                  str(samples_dir / "md_v5a_detections.json"), "--out", str(tmp_path / "out.json"), *flags], capsys)
    assert message.format(t=tmp_path) in err
    # No output, no checkpoint; a run that got as far as opening the model leaves its debug log (OUT.log).
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "out.json.log") == before


def test_allow_list_by_label_without_taxonomy_makes_the_rest_unknown(fitted, samples_dir, tmp_path):
    allow = tmp_path / "allow.csv"
    allow.write_text("label\nelephant\nbear\n")
    out = _run(samples_dir, fitted, tmp_path / "out.json", "--allow-list", allow)
    assert set(out["classification_categories"].values()) == {"bear", "elephant", "unknown"}
    megadetector_validate(tmp_path / "out.json")
