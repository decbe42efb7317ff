import json

import pytest

from trapkit.errors import TrapkitError
from trapkit.spec import SPEC_FORMAT_VERSION, ModelSpec


def make_spec(**kw):
    base = dict(arch="tf_efficientnet_lite0", labels=("deer", "fox", "boar"), taxonomy=("a;b", "c;d", "e;f"))
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
        ({"taxonomy": ("a",)}, "taxonomy strings"),
        ({"resize_mode": "stretch"}, "unknown resize_mode"),
        ({"std": (0.5, 0.0, 0.5)}, "std > 0"),
        ({"format_version": SPEC_FORMAT_VERSION + 1}, "upgrade trapkit"),
    ],
)
def test_invalid_specs_are_user_errors(changes, message):
    with pytest.raises(TrapkitError, match=message):
        make_spec(**changes)


def test_unreadable_spec_files_say_what_to_do(tmp_path):
    with pytest.raises(TrapkitError, match="no model spec"):
        ModelSpec.load(tmp_path)
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(TrapkitError, match="not valid JSON"):
        ModelSpec.load(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps({"labels": ["a"]}))
    with pytest.raises(TrapkitError, match="incomplete"):
        ModelSpec.load(tmp_path)
