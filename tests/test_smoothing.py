"""serve/smoothing.py against MegaDetector's own smoothing functions: the same top-1 for every detection.

MegaDetector's `smooth_classification_results_image_level` and `..._sequence_level` are
the reference; they run on the same unsmoothed input (and, for sequences, on the COCO
Camera Traps file trapkit writes), with the same options.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from classify_helpers import megadetector_module, megadetector_smoothing_options, top1
from trapkit.errors import TrapkitError
from trapkit.serve.settings import ClassifySettings
from trapkit.serve.smoothing import SmoothingOptions, SmoothSettings, cct_document, sequences, smooth

NAMES = {"0": "deer", "1": "elk", "2": "cow", "3": "unknown", "4": "fox"}
TAXA = {  # id: (name, description); ids as a classify run with rollup would have them
    "0": ("wolf", ";mammalia;carnivora;canidae;canis;lupus;gray wolf"),
    "1": ("coyote", ";mammalia;carnivora;canidae;canis;latrans;coyote"),
    "2": ("fox", ";mammalia;carnivora;canidae;vulpes;vulpes;red fox"),
    "3": ("dog", ";mammalia;carnivora;canidae;canis;lupus familiaris;domestic dog"),
    "4": ("deer", ";mammalia;cetartiodactyla;cervidae;odocoileus;virginianus;white-tailed deer"),
    "5": ("elk", ";mammalia;cetartiodactyla;cervidae;cervus;canadensis;elk"),
    "6": ("blank", "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank"),
    "7": ("canidae", ";mammalia;carnivora;canidae;;;canidae"),
    "8": ("canis", ";mammalia;carnivora;canidae;canis;;canis"),
    "9": ("cervidae", ";mammalia;cetartiodactyla;cervidae;;;cervidae"),
    "10": ("mammalia", ";mammalia;;;;;mammalia"),
    "11": ("animal", "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal"),
}


def _doc(images, names=NAMES, descriptions=None) -> dict:
    doc = {"info": {"format_version": "1.6"}, "detection_categories": {"1": "animal", "2": "person"},
           "classification_categories": dict(names), "images": images}
    if descriptions:
        doc["classification_category_descriptions"] = dict(descriptions)
    return doc


def _det(cid, conf=0.9, det_conf=0.8, category="1", rest=()):
    return {"category": category, "conf": det_conf, "bbox": [0.1, 0.1, 0.2, 0.2],
            "classifications": [[cid, conf], *[list(r) for r in rest]]}


def _theirs(doc, settings: SmoothSettings, cct: dict | None) -> dict:
    md = megadetector_module("postprocessing.classification_postprocessing")
    d = copy.deepcopy(doc)
    if settings.mode in ("image", "both"):
        d = md.smooth_classification_results_image_level(d, options=megadetector_smoothing_options(settings.options))
    if settings.mode in ("sequence", "both"):
        d = md.smooth_classification_results_sequence_level(d, cct, options=megadetector_smoothing_options(
            settings.options))
    return d


def _ours(doc, settings: SmoothSettings, times: dict, gap: float = 60):
    d = copy.deepcopy(doc)
    groups = sequences(d["images"], times, gap)
    report = smooth(d, settings, groups)
    return d, report, cct_document(d["images"], groups, times)


def test_an_image_of_many_cows_and_one_deer_is_cows():
    images = [{"file": "a.jpg", "detections": [_det("2") for _ in range(4)]
               + [_det("0", rest=[("2", 0.05)]), _det("3", 0.7), _det("1", 0.3, rest=[("0", 0.2)])]}]
    doc = _doc(images)
    ours, report, _ = _ours(doc, SmoothSettings("image"), {0: None})
    assert top1(ours) == [["2", "2", "2", "2", "2", "2", "1"]]  # unsure elk (0.3) does not vote and is left alone
    deer = ours["images"][0]["detections"][4]
    assert deer["classifications"] == [["2", 0.9]]  # confidence kept, the new class not repeated below
    assert deer["classifications_before_smoothing"] == [["0", 0.9], ["2", 0.05]]
    assert "classifications_before_smoothing" not in ours["images"][0]["detections"][0]
    assert report.changed == 2
    assert top1(ours) == top1(_theirs(doc, SmoothSettings("image"), None))


def test_a_sequence_is_smoothed_across_its_images_and_only_within_it():
    # Camera A: a 40-second burst, 2 deer per frame, an elk in frame 3; 10 minutes later a lone elk.
    images = [{"file": f"camA/{i}.jpg", "detections": [_det("0"), _det("0")]} for i in range(4)]
    images[2]["detections"].append(_det("1"))
    images.append({"file": "camA/later.jpg", "detections": [_det("1")]})
    images.append({"file": "camB/1.jpg", "detections": [_det("1")]})  # no EXIF time: alone
    times = {0: "2024:05:01 10:00:00", 1: "2024:05:01 10:00:10", 2: "2024:05:01 10:00:20",
             3: "2024:05:01 10:00:40", 4: "2024:05:01 10:10:40", 5: None}
    assert sequences(images, times, 60) == [[0, 1, 2, 3], [4], [5]]
    doc = _doc(images)
    settings = SmoothSettings("sequence")
    ours, report, cct = _ours(doc, settings, times, gap=60)
    assert top1(ours) == [["0", "0"], ["0", "0"], ["0", "0", "0"], ["0", "0"], ["1"], ["1"]]
    assert report.changed == 1
    assert top1(ours) == top1(_theirs(doc, settings, cct))
    # Image-level smoothing alone changes nothing here (one elk beside two deer is too few to outvote).
    assert top1(_ours(doc, SmoothSettings("image"), times)[0]) == top1(doc)
    seq = {im["file_name"]: (im["seq_id"], im["frame_num"], im["seq_num_frames"]) for im in cct["images"]}
    assert seq["camA/2.jpg"] == (seq["camA/0.jpg"][0], 2, 4) and seq["camB/1.jpg"][2] == 1
    assert "datetime" in cct["images"][0] and "datetime" not in [i for i in cct["images"] if i["id"] == "camB/1.jpg"][0]


def test_video_frames_are_one_sequence_in_frame_order():
    images = [{"file": f"clip.mp4/frame{n:06d}.jpg"} for n in (30, 0, 10)] + [{"file": "x.avi/frame000000.jpg"}]
    assert sequences(images, {i: None for i in range(4)}, 60) == [[1, 2, 0], [3]]


def _random_images(rng, n_images: int, ids: list[str], p=None) -> tuple[list[dict], dict]:
    """Images in 3 folders, bursts of 1-6 shots a few seconds apart, 0-6 detections each."""
    images, times, t = [], {}, 0
    for i in range(n_images):
        t += int(rng.choice([3, 5, 8, 400]))
        dets = []
        for _ in range(int(rng.integers(0, 7))):
            cid = str(rng.choice(ids, p=p))
            conf = round(float(rng.uniform(0.3, 1.0)), 3)
            second = [str(rng.choice(ids)), round(conf * 0.4, 3)]
            dets.append(_det(cid, conf, det_conf=round(float(rng.uniform(0.05, 1.0)), 3),
                             category="2" if rng.random() < 0.1 else "1", rest=[second] if second[0] != cid else []))
        images.append({"file": f"cam{i % 3}/img{i:04d}.jpg", "detections": dets})
        times[i] = f"2024:05:01 {10 + t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}" if i % 17 else None
    return images, times


MORE_FLIPS = SmoothingOptions(min_detections_to_overwrite_secondary=2, max_detections_nondominant_class=2,
                              max_detections_nondominant_class_same_family=3, classification_confidence_threshold=0.4)


NO_PROPAGATION = SmoothingOptions(propagate_classifications_through_taxonomy=False,
                                  max_detections_nondominant_class_same_family=3)


@pytest.mark.parametrize("mode", ["image", "sequence", "both"])
@pytest.mark.parametrize("options", [SmoothingOptions(), MORE_FLIPS, NO_PROPAGATION],
                         ids=["defaults", "more-flips", "same-family"])
@pytest.mark.parametrize("taxonomy", [False, True], ids=["names", "taxonomy"])
def test_same_top1_as_megadetector_on_random_sequences(mode, options, taxonomy):
    rng = np.random.default_rng(7)
    if taxonomy:
        names, descriptions = {k: v[0] for k, v in TAXA.items()}, {k: v[1] for k, v in TAXA.items()}
        weights = np.array([6, 1, 1, 1, 5, 1, 1, 2, 1, 1, 1, 1], float)
    else:
        names, descriptions, weights = NAMES, None, np.array([5, 1, 3, 1, 1], float)
    images, times = _random_images(rng, 240, list(names), weights / weights.sum())
    doc = _doc(images, names, descriptions)
    settings = SmoothSettings(mode, options=options)
    ours, report, cct = _ours(doc, settings, times, gap=30)
    theirs = _theirs(doc, settings, json.loads(json.dumps(cct)))
    assert top1(ours) == top1(theirs)
    assert report.changed > 5  # the rules did fire
    changed = [d for im in ours["images"] for d in im["detections"] if "classifications_before_smoothing" in d]
    assert len(changed) == report.changed
    for d in changed:
        before = d["classifications_before_smoothing"]
        assert d["classifications"][0][1] == before[0][1] and d["classifications"][0][0] != before[0][0]


def test_taxonomy_rules_turn_parents_into_children_as_megadetector_does():
    names, descriptions = {k: v[0] for k, v in TAXA.items()}, {k: v[1] for k, v in TAXA.items()}
    # canidae and canis become the wolf that is also seen; the lone deer stays (different order).
    dets = [_det("0"), _det("0"), _det("7"), _det("8", 0.6), _det("4"), _det("11", 0.8)]
    doc = _doc([{"file": "a.jpg", "detections": dets}], names, descriptions)
    ours, _, _ = _ours(doc, SmoothSettings("image"), {0: None})
    assert top1(ours) == [["0", "0", "0", "0", "4", "0"]]
    assert top1(ours) == top1(_theirs(doc, SmoothSettings("image"), None))


def test_same_family_rule_flips_other_genera_but_never_a_species_into_its_genus():
    names, descriptions = {k: v[0] for k, v in TAXA.items()}, {k: v[1] for k, v in TAXA.items()}
    dets = [_det("8"), _det("8"), _det("8"), _det("0"), _det("2"), _det("4")]  # canis x3, wolf, fox, deer
    doc = _doc([{"file": "a.jpg", "detections": dets}], names, descriptions)
    settings = SmoothSettings("image", options=NO_PROPAGATION)
    ours, _, _ = _ours(doc, settings, {0: None})
    assert top1(ours) == [["8", "8", "8", "0", "8", "4"]]
    assert top1(ours) == top1(_theirs(doc, settings, None))


def test_bad_smoothing_settings_are_user_errors():
    with pytest.raises(TrapkitError, match="'sequences' is not a smoothing mode; use one of image, sequence, both"):
        SmoothSettings("sequences")
    with pytest.raises(TrapkitError, match="--sequence-gap -1 must be 0 seconds or more"):
        ClassifySettings(sequence_gap=-1)


def test_options_mirror_megadetectors_defaults():
    theirs = megadetector_module("postprocessing.classification_postprocessing").ClassificationSmoothingOptions()
    for key, value in dataclasses.asdict(SmoothingOptions()).items():
        assert getattr(theirs, key) == (list(value) if isinstance(value, tuple) else value), key
