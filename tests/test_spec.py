import json

import pytest

from trapkit.errors import TrapkitError
from trapkit.spec import SPEC_FORMAT_VERSION, ModelSpec


TAXONOMY = (";mammalia;cetartiodactyla;cervidae;;;deer", ";mammalia;carnivora;canidae;vulpes;vulpes;red fox",
            ";mammalia;cetartiodactyla;suidae;sus;scrofa;wild boar")


def make_spec(**kw):
    base = dict(arch="tf_efficientnet_lite0", labels=("deer", "fox", "boar"), taxonomy=TAXONOMY)
    return ModelSpec(**(base | kw))


def test_json_round_trip_keeps_every_field(tmp_path):
    spec = make_spec(input_size=160, resize_mode="center_crop", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert again.labels == ("deer", "fox", "boar") and again.num_classes == 3
    path = spec.save(tmp_path)
    assert path.name == "spec.json"
    assert ModelSpec.load(tmp_path) == spec
    assert json.loads(path.read_text())["format_version"] == SPEC_FORMAT_VERSION


def test_fields_from_a_newer_writer_are_carried_not_fatal():
    d = make_spec().to_dict() | {"future_field": 7}
    spec = ModelSpec.from_dict(d)
    assert spec.extra == {"future_field": 7}
    assert spec.labels == ("deer", "fox", "boar")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"labels": ()}, "no class labels"),
        ({"labels": ("deer", "deer", "fox")}, "duplicate class labels"),
        ({"labels": ("deer", "", "fox")}, "model spec label is empty; every class needs a name"),
        ({"labels": ("deer", "fox", " ")}, "model spec label is empty; every class needs a name"),
        ({"taxonomy": ("a",)}, "taxonomy strings"),
        ({"taxonomy": ("a;b", "c;d", "e;f")}, "'deer' has 2 tokens, not 7"),
        ({"taxonomy": TAXONOMY[:2] + (";mammalia;;suidae;;;boar",)}, "'boar' has a family but no order"),
        ({"resize_mode": "stretch"}, "unknown resize_mode"),
        ({"std": (0.5, 0.0, 0.5)}, "std > 0"),
        ({"format_version": SPEC_FORMAT_VERSION + 1}, "upgrade trapkit"),
    ],
)
def test_invalid_specs_are_user_errors(changes, message):
    with pytest.raises(TrapkitError, match=message):
        make_spec(**changes)


def test_taxonomy_strings_are_stored_lowercase_and_stripped():
    spec = make_spec(taxonomy=TAXONOMY[:2] + (" ;Mammalia;Cetartiodactyla;Suidae;Sus;Scrofa;Wild Boar ",))
    assert spec.taxonomy[2] == TAXONOMY[2]
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_unreadable_spec_files_say_what_to_do(tmp_path):
    with pytest.raises(TrapkitError, match="no model spec"):
        ModelSpec.load(tmp_path)
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(TrapkitError, match="not valid JSON"):
        ModelSpec.load(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps({"labels": ["a"]}))
    with pytest.raises(TrapkitError, match="incomplete"):
        ModelSpec.load(tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"feat_dim": "16"}, "model spec field feat_dim must be a whole number, not \"16\"; re-export the model"),
    ({"name": 5}, "model spec field name must be text, not 5"),
    ({"extra": ["x"], "future_field": 1}, "model spec field extra must be an object"),
    ({"labels": ["deer", 3, "boar"]}, "model spec field labels must be text, not 3"),
    ({"mean": [0.5, 0.5]}, "model spec field mean must be a list of 3 numbers"),
    ({"l2_normalize": 1}, "model spec field l2_normalize must be true or false"),
])
def test_spec_fields_of_the_wrong_type_are_one_line_errors(changes, message):
    with pytest.raises(TrapkitError, match=message.replace("(", r"\(")):
        ModelSpec.from_dict(make_spec().to_dict() | changes)


def test_a_newer_spec_says_upgrade_before_judging_its_fields():
    newer = make_spec().to_dict() | {"format_version": SPEC_FORMAT_VERSION + 1, "resize_mode": "letterbox"}
    with pytest.raises(TrapkitError, match="newer than this trapkit understands"):
        ModelSpec.from_dict(newer)
    renamed = {k: v for k, v in newer.items() if k != "arch"} | {"architecture": "x"}
    with pytest.raises(TrapkitError, match="upgrade trapkit"):
        ModelSpec.from_dict(renamed)
