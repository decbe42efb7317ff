"""Reading MegaDetector batch output: versions 1.3+, one-line errors naming the first problem."""

from __future__ import annotations

import copy
import json

import pytest

from trapkit.app.cli import main
from trapkit.errors import TrapkitError
from trapkit.detections import first_problem, load_detections, upgrade_to_output


@pytest.fixture
def sample(samples_dir) -> dict:
    return json.loads((samples_dir / "md_v5a_detections.json").read_text())


def test_bundled_output_loads(samples_dir):
    doc = load_detections(samples_dir / "md_v5a_detections.json")
    assert len(doc["images"]) == 10 and doc["detection_categories"]["1"] == "animal"


def test_version_1_3_is_read_and_upgraded(sample, tmp_path):
    sample["info"]["format_version"] = 1.3  # old files wrote a number
    sample["images"].append({"file": "gone.jpg", "failure": "Failure image access"})  # 1.3: no detections key
    path = tmp_path / "old.json"
    path.write_text(json.dumps(sample))
    doc = upgrade_to_output(load_detections(path))
    assert doc["info"]["format_version"] == "1.6"
    assert doc["images"][-1]["detections"] is None


BROKEN = [
    (lambda d: d.pop("info"), "missing 'info' object"),
    (lambda d: d["info"].update(format_version="1.2"), "older than 1.3"),
    (lambda d: d["info"].update(format_version="new"), "info.format_version"),
    (lambda d: d.pop("detection_categories"), "detection_categories"),
    (lambda d: d.update(images={}), "missing 'images' list"),
    (lambda d: d["images"][3].pop("file"), "images[3] has no 'file'"),
    (lambda d: d["images"][3]["detections"][1].update(category="9"),
     "images[3] (african_elephants.jpg) detections[1] has category '9'"),
    (lambda d: d["images"][3]["detections"][0].update(bbox=[0.1, 0.2]), "'bbox' must be four numbers"),
    (lambda d: d["images"][3]["detections"][0].update(conf="high"), "expected a confidence between 0 and 1"),
    (lambda d: d["images"][3]["detections"][0].update(conf=float("nan")), "expected a confidence between 0 and 1"),
    (lambda d: d["images"][3]["detections"][0].update(conf=1.5), "has 'conf' 1.5, expected a confidence"),
    (lambda d: d["info"].update(format_version="NaN"), "info.format_version is 'NaN'"),
    (lambda d: d["info"].update(format_version="inf"), "info.format_version is 'inf'"),
    (lambda d: d["images"][3]["detections"][1].update(category=["1"]),
     "images[3] (african_elephants.jpg) detections[1] has category ['1']"),
    (lambda d: d["images"][3]["detections"][1].update(category=1), "detections[1] has category 1,"),
    (lambda d: d["images"][3]["detections"][0].update(bbox=[0.1, float("nan"), 0.2, 0.2]),
     "images[3] (african_elephants.jpg) detections[0] 'bbox' must be four numbers"),
    (lambda d: d["images"][3]["detections"][0].update(bbox=[0.1, 0.1, float("inf"), 0.2]), "'bbox' must be four"),
    (lambda d: d["images"][4].update(failure=3), "non-string failure"),
]


@pytest.mark.parametrize("breaks, message", BROKEN)
def test_wrong_schema_names_the_first_problem(sample, tmp_path, breaks, message):
    doc = copy.deepcopy(sample)
    breaks(doc)
    assert message in first_problem(doc)
    path = tmp_path / "md.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TrapkitError, match="is not MegaDetector batch output") as e:
        load_detections(path)
    assert "\n" not in str(e.value)


def test_malformed_json_is_a_one_line_cli_error(tmp_path, samples_dir, tiny_onnx_path, capsys):
    path = tmp_path / "md.json"
    path.write_text('{"info": {"format_version": "1.6"}, "images": [')
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections", str(path),
                 "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("trapkit: error:") and "is not valid JSON (line 1" in err and "\n" not in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("data, message", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),  # json's recursion limit
    (b'{"info": {"format_version": ' + b"9" * 5000 + b"}}", "holds a value that cannot be read"),  # int digit limit
    (b'{"info": "\xed\xb3\xbf"}', "cannot read detections file"),  # not UTF-8
])
def test_hostile_json_is_a_one_line_error_not_a_traceback(tmp_path, samples_dir, tiny_onnx_path, capsys, data,
                                                           message):
    path = tmp_path / "md.json"
    path.write_bytes(data)
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections", str(path),
                 "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("trapkit: error:") and message in err and "\n" not in err


def test_terminal_escape_codes_in_file_names_are_printed_escaped(tmp_path, samples_dir, tiny_onnx_path, capsys):
    from classify_helpers import animal, write_detections

    md = write_detections(tmp_path / "md.json", [{"file": "\x1b[2J\x1b]0;pwned\x07cam.jpg", "detections": [animal()]}])
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections", str(md),
                 "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert code == 1 and "\x1b" not in err and "\x07" not in err and "\\x1b[2J" in err


def test_degenerate_boxes_are_left_out_with_a_warning(tmp_path, samples_dir, caplog):
    from trapkit.detections import qualifying

    doc = load_detections(samples_dir / "md_v5a_detections.json")
    dets = doc["images"][3]["detections"]
    dets[0]["bbox"] = [0.5, 0.5, 0.0, 0.2]  # no width
    dets[1]["bbox"] = [1.2, 0.1, 0.2, 0.2]  # wholly right of the frame
    items = qualifying(doc, 0.1, ["ANIMAL"])  # category names match without regard to case
    assert 0 not in items.get(3, []) and 1 not in items.get(3, [])
    assert "2 detection box(es) with no area inside their image were left out" in caplog.text


def test_top_level_list_is_rejected(tmp_path):
    path = tmp_path / "md.json"
    path.write_text("[]")
    with pytest.raises(TrapkitError, match="top level is a JSON list"):
        load_detections(path)


def test_unknown_category_name_lists_the_known_ones(tmp_path, samples_dir, tiny_onnx_path, capsys):
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections",
                 str(samples_dir / "md_v5a_detections.json"), "--out", str(tmp_path / "o.json"),
                 "--categories", "bird"])
    assert code == 1
    assert "category 'bird' is not in the detections file; it has animal, person, vehicle" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"category": ["1"]}, {"bbox": [0.1, 0.1, float("nan"), 0.2]},
                                 {"bbox": [float("inf"), 0.1, 0.2, 0.2]}])
def test_malformed_detection_is_a_one_line_cli_error(sample, tmp_path, samples_dir, tiny_onnx_path, capsys, bad):
    sample["images"][3]["detections"][0].update(bad)
    path = tmp_path / "md.json"
    path.write_text(json.dumps(sample))  # NaN and Infinity as Python's json writes them
    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections", str(path),
                 "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err.startswith("trapkit: error:") and "images[3] (african_elephants.jpg) detections[0]" in err
    assert not (tmp_path / "out.json").exists()


def test_stray_boxes_outside_the_image_are_classified_with_the_rest(sample, tmp_path, samples_dir, tiny_onnx_path):
    dets = sample["images"][3]["detections"]
    dets[0]["bbox"], dets[1]["bbox"] = [0.5, 0.1, 1e300, 0.2], [-0.2, -0.1, 0.4, 0.3]
    path = tmp_path / "md.json"
    path.write_text(json.dumps(sample))
    assert main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections", str(path),
                 "--out", str(tmp_path / "out.json"), "--threshold", "0"]) == 0
    out = json.loads((tmp_path / "out.json").read_text())["images"][3]
    assert "classification_failure" not in out and all(d.get("classifications") for d in out["detections"])
