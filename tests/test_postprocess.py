"""serve/postprocess.py: allow-lists, per-class thresholds and rollup on the full probability vector.

The allow-list mapping is checked against MegaDetector's own `restrict_to_taxa_list`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from classify_helpers import megadetector_module
from trapkit.errors import TrapkitError
from trapkit.serve.postprocess import (
    ANIMAL_TAXON, build_plan, classify, make_plan, plain_plan, read_allow_list, used_categories,
)
from trapkit.serve.settings import PostSettings

HUMAN = "990ae9dd-7a59-4344-afcb-1b7b21368000;mammalia;primates;hominidae;homo;sapiens;human"  # SpeciesNet's
CLASSES = {
    "wolf": ";mammalia;carnivora;canidae;canis;lupus;gray wolf",
    "coyote": ";mammalia;carnivora;canidae;canis;latrans;coyote",
    "fox": ";mammalia;carnivora;canidae;vulpes;vulpes;red fox",
    "bobcat": ";mammalia;carnivora;felidae;lynx;rufus;bobcat",
    "deer": ";mammalia;cetartiodactyla;cervidae;odocoileus;virginianus;white-tailed deer",
    "turkey": ";aves;galliformes;phasianidae;meleagris;gallopavo;wild turkey",
    "blank": "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank",
    "human": HUMAN,
}
LABELS = list(CLASSES)
TAXONOMY = list(CLASSES.values())


def _p(**probs) -> np.ndarray:
    """(C,) float32 probabilities by label; the rest zero."""
    out = np.zeros(len(LABELS), np.float32)
    for label, p in probs.items():
        out[LABELS.index(label)] = p
    return out


def _named(result, plan) -> list[tuple[str, float]]:
    return [(plan.categories[int(cid)].name, conf) for cid, conf in result]


def test_no_settings_is_the_plain_top_k():
    plan = plain_plan(LABELS, TAXONOMY)
    result = classify(_p(wolf=0.5, coyote=0.3, fox=0.2), plan, 2)
    assert result == [["0", 0.5], ["1", 0.3]]
    assert used_categories(plan, {"0"}) == ({str(i): x for i, x in enumerate(LABELS)},
                                            {str(i): x for i, x in enumerate(TAXONOMY)})


@pytest.mark.parametrize("probs, answer, conf, description", [
    # Above the bar: nothing changes.
    (dict(wolf=0.7, coyote=0.3), "wolf", 0.7, CLASSES["wolf"]),
    # Genus: wolf + coyote.
    (dict(wolf=0.4, coyote=0.3, fox=0.3), "canis", 0.7, ";mammalia;carnivora;canidae;canis;;canis"),
    # Family: no genus reaches 0.65, canidae does.
    (dict(wolf=0.3, coyote=0.2, fox=0.2, bobcat=0.3), "canidae", 0.7, ";mammalia;carnivora;canidae;;;canidae"),
    # Class.
    (dict(wolf=0.25, bobcat=0.25, deer=0.25, turkey=0.05, blank=0.2), "mammalia", 0.75, ";mammalia;;;;;mammalia"),
    # Every taxon together: SpeciesNet's "animal".
    (dict(wolf=0.2, deer=0.2, turkey=0.3, blank=0.3), "animal", 0.7, ANIMAL_TAXON),
    # Nothing reaches the bar: unknown, with the top probability.
    (dict(blank=0.5, wolf=0.2, turkey=0.3), "unknown", 0.5, ";;;;;;unknown"),
])
def test_rollup_reports_the_lowest_taxon_whose_sum_reaches_the_bar(probs, answer, conf, description):
    plan = make_plan(LABELS, TAXONOMY, rollup=0.65)
    result = classify(_p(**probs), plan, 3)
    first = plan.categories[int(result[0][0])]
    assert (first.name, result[0][1], first.description) == (answer, pytest.approx(conf), description)
    confs = [c for _, c in result]
    assert confs == sorted(confs, reverse=True) and len({cid for cid, _ in result}) == len(result) <= 3
    names, descriptions = used_categories(plan, {cid for cid, _ in result})
    assert names[result[0][0]] == answer and descriptions[result[0][0]] == description


def test_rollup_uses_the_full_vector_not_the_written_top_k():
    plan = make_plan(LABELS, TAXONOMY, rollup=0.65)
    # k=1 writes only one entry, yet coyote's 0.3 (never written) still counts towards canis.
    assert _named(classify(_p(wolf=0.4, coyote=0.3, bobcat=0.3), plan, 1), plan) == [("canis", 0.7)]


def test_category_ids_do_not_depend_on_the_data():
    a, b = make_plan(LABELS, TAXONOMY, rollup=0.65), make_plan(LABELS, TAXONOMY, rollup=0.65)
    assert a.describe() == b.describe()
    assert [c.name for c in a.categories[:len(LABELS)]] == LABELS


def test_class_thresholds_roll_up_or_say_unknown_without_taxonomy():
    with_taxonomy = make_plan(LABELS, TAXONOMY, thresholds={"deer": 0.9})
    assert _named(classify(_p(deer=0.8, wolf=0.2), with_taxonomy, 2), with_taxonomy) == [("mammalia", 1.0),
                                                                                        ("deer", 0.8)]
    assert _named(classify(_p(wolf=0.5, deer=0.3, turkey=0.2), with_taxonomy, 1), with_taxonomy) == [("wolf", 0.5)]
    plain = make_plan(LABELS, None, thresholds={"deer": 0.9})
    result = classify(_p(deer=0.8, wolf=0.2), plain, 3)
    assert _named(result, plain) == [("unknown", 0.8), ("deer", 0.8), ("wolf", 0.2)]
    names, descriptions = used_categories(plain, {cid for cid, _ in result})
    assert names[result[0][0]] == "unknown" and descriptions is None
    # The class bar beats --rollup for that class; the others keep --rollup.
    both = make_plan(LABELS, TAXONOMY, rollup=0.65, thresholds={"wolf": 0.3})
    assert _named(classify(_p(wolf=0.4, coyote=0.3, fox=0.3), both, 1), both) == [("wolf", 0.4)]
    assert _named(classify(_p(coyote=0.4, wolf=0.3, fox=0.3), both, 1), both) == [("canis", 0.7)]


def _softmax(**logits) -> np.ndarray:
    """(C,) float32 softmax over the named classes, as a model computes it; the rest zero."""
    z = np.array(list(logits.values()), np.float32)
    e = np.exp(z - z.max())
    return _p(**dict(zip(logits, e / e.sum())))


def test_a_bar_of_one_is_reached_by_float32_sums_that_are_one():
    """A float32 softmax summed falls a few 1e-8 short of 1.0: a bar of 1 must still be reachable."""
    canids = _softmax(wolf=1, coyote=1, fox=1.3)
    assert canids.astype(np.float64).sum() < 1.0
    plan = make_plan(LABELS, TAXONOMY, rollup=1.0)
    assert _named(classify(canids, plan, 1), plan) == [("canidae", 1.0)]  # not "unknown"
    mammals = _softmax(deer=3, wolf=1, coyote=1)
    assert mammals.astype(np.float64).sum() < 1.0
    plan = make_plan(LABELS, TAXONOMY, thresholds={"deer": 1.0})
    assert _named(classify(mammals, plan, 1), plan) == [("mammalia", 1.0)]


def _allow_csv(tmp_path, rows, header="latin,common"):
    path = tmp_path / "allow.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_allow_list_moves_probability_to_the_nearest_allowed_ancestor(tmp_path):
    path = _allow_csv(tmp_path, ["canis lupus,gray wolf", "lynx rufus,bobcat", "meleagris gallopavo,wild turkey",
                                 "panthera onca,jaguar"])  # the model has no jaguar: skipped, logged
    plan = build_plan(LABELS, TAXONOMY, PostSettings(allow_list=path))
    result = classify(_p(wolf=0.1, coyote=0.3, fox=0.2, bobcat=0.1, deer=0.15, turkey=0.1, blank=0.03, human=0.02),
                      plan, 8)
    assert _named(result, plan) == [("canis", 0.3), ("canidae", 0.2), ("mammalia", 0.15), ("wolf", 0.1),
                                    ("bobcat", 0.1), ("turkey", 0.1), ("blank", 0.03), ("human", 0.02)]
    names, _ = used_categories(plan, {cid for cid, _ in result})
    assert "coyote" not in names.values() and "fox" not in names.values()  # removed classes are not listed


def test_allow_list_by_label_common_name_and_renamed_taxa(tmp_path):
    # Labels match exactly ("Coyote" is no label: skipped); common and scientific names in any case.
    path = _allow_csv(tmp_path, ["wolf,,", ",Bobcat,", "Coyote,,", ",dog family,Canidae"], "label,common,latin")
    plan = build_plan(LABELS, TAXONOMY, PostSettings(allow_list=path))
    result = classify(_p(fox=0.6, wolf=0.2, bobcat=0.2), plan, 3)
    first = plan.categories[int(result[0][0])]
    assert (first.name, first.description) == ("dog family", ";mammalia;carnivora;canidae;;;dog family")
    # Deer, turkey: no allowed ancestor below the class, so mammalia (above canidae) and animal.
    assert _named(classify(_p(deer=0.7, turkey=0.3), plan, 2), plan) == [("mammalia", 0.7), ("animal", 0.3)]
    # Without taxonomy only labels can be named, and removed classes become unknown.
    plain = build_plan(LABELS, None, PostSettings(allow_list=_allow_csv(tmp_path, ["wolf", "fox"], "label")))
    assert _named(classify(_p(wolf=0.3, coyote=0.4, bobcat=0.3), plain, 2), plain) == [("unknown", 0.7), ("wolf", 0.3)]


@pytest.mark.parametrize("name", ["mammal", "wolf"])
def test_a_class_on_an_allow_list_is_the_same_by_label_latin_or_common_name(tmp_path, name):
    labels, taxonomy = [*LABELS, "mammal"], [*TAXONOMY, ";mammalia;;;;;mammal"]  # a class at the rank of class
    spelled = {"mammal": [("label", "mammal"), ("latin", "Mammalia"), ("common", "mammal")],
               "wolf": [("label", "wolf"), ("latin", "canis lupus"), ("common", "Gray Wolf")]}[name]
    probs = np.zeros(len(labels), np.float32)
    probs[[labels.index("deer"), labels.index("coyote"), labels.index("turkey")]] = 0.5, 0.3, 0.2
    answers = []
    for header, row in spelled:
        plan = build_plan(labels, taxonomy, PostSettings(allow_list=_allow_csv(tmp_path, [row], header)))
        answers.append(_named(classify(probs, plan, 3), plan))
    assert answers[0] == answers[1] == answers[2], spelled
    expected = {"mammal": [("mammal", 0.8), ("animal", 0.2)],  # the deer and coyote are mammals
                "wolf": [("mammal", 0.5), ("canis", 0.3), ("animal", 0.2)]}[name]  # the coyote is of the wolf's genus
    assert answers[0][:len(expected)] == expected


def test_allow_list_matches_megadetectors_restrict_to_taxa_list(tmp_path):
    """Each class's destination equals MegaDetector's mapping of a detection of that class."""
    restrict_to_taxa_list = megadetector_module("postprocessing.classification_postprocessing").restrict_to_taxa_list

    rows = ["canis lupus,gray wolf", "lynx rufus,bobcat", "meleagris gallopavo,wild turkey", "cervidae,deer"]
    allow = _allow_csv(tmp_path, rows)
    taxonomy_file = tmp_path / "taxonomy.txt"
    taxonomy_file.write_text("\n".join(TAXONOMY) + "\n")
    doc = {"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal"},
           "classification_categories": {str(i): x for i, x in enumerate(LABELS)},
           "classification_category_descriptions": {str(i): x for i, x in enumerate(TAXONOMY)},
           "images": [{"file": f"{x}.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0, 0, 1, 1],
                                                             "classifications": [[str(i), 0.9]]}]}
                      for i, x in enumerate(LABELS)]}
    (tmp_path / "in.json").write_text(json.dumps(doc))
    restrict_to_taxa_list(str(allow), str(taxonomy_file), str(tmp_path / "in.json"), str(tmp_path / "out.json"),
                          verbose=False)
    theirs = json.loads((tmp_path / "out.json").read_text())
    plan = build_plan(LABELS, TAXONOMY, PostSettings(allow_list=allow))
    for i, im in enumerate(theirs["images"]):
        their_description = theirs["classification_category_descriptions"][im["detections"][0]["classifications"][0][0]]
        ours = plan.categories[int(plan.target[i])].description
        assert ours.split(";")[1:6] == their_description.split(";")[1:6], LABELS[i]


@pytest.mark.parametrize("header, rows, taxonomy, message", [
    ("latin,common", ["panthera onca,jaguar", "ursus arctos,brown bear"], TAXONOMY,
     "names no class or taxon of the model \\(panthera onca, ursus arctos\\)"),
    ("latin,common", ["canis lupus,gray wolf"], None, "the model has no taxonomy: name classes in a label column"),
    ("latin,common", [], TAXONOMY, "has no names"),
    ("species", ["wolf"], TAXONOMY, "needs the column latin and/or common and/or label"),
])
def test_bad_allow_lists_are_one_line_errors(tmp_path, header, rows, taxonomy, message):
    with pytest.raises(TrapkitError, match=message) as e:
        build_plan(LABELS, taxonomy, PostSettings(allow_list=_allow_csv(tmp_path, rows, header)))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("label,threshold\nwolf,0.8\nlynx,0.5\n", r"row 3 \(lynx\) name no class of the model"),
    ("label,threshold\nwolf,1.5\nfox,x\n", r"row 2 \(wolf: 1.5\), row 3 \(fox: x\) are not confidences in \[0, 1\]"),
    ("label,threshold\nwolf,0.5\nwolf,0.6\n", r"row 3 \(wolf\) repeat a label"),
    ("label,conf\nwolf,0.5\n", "needs the columns label,threshold"),
    ("label,threshold\n", "has no rows"),
])
def test_bad_class_thresholds_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "thresholds.csv"
    path.write_text(text)
    with pytest.raises(TrapkitError, match=message) as e:
        build_plan(LABELS, TAXONOMY, PostSettings(class_thresholds=path))
    assert "\n" not in str(e.value)


def test_bad_rollup_and_missing_files(tmp_path):
    with pytest.raises(TrapkitError, match="--rollup 1.5 is out of range"):
        PostSettings(rollup=1.5)
    with pytest.raises(TrapkitError, match="does not exist"):
        read_allow_list(tmp_path / "nope.csv")
