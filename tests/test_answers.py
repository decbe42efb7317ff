"""The answers book: one reader and writer for every answers CSV (al next, the labelling page, the review page).

Spreadsheet formulas never reach Excel from a species cell, and a round trip changes nothing; the wrong-box
marker is recognised in any case and spacing; a species with control characters is refused in one line.
"""

from __future__ import annotations

import csv
import json

import pytest

from trapkit.answers import WRONG_BOX, AnswersBook, Answer, neutralise, read_answers, restore, write_answers
from trapkit.app.cli import main
from trapkit.errors import TrapkitError
from trapkit.spec import ModelSpec

FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "'=already quoted", "''+twice"]


def _cells(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("species", FORMULAS)
def test_a_formula_is_neutralised_on_writing_and_restored_on_reading(species):
    cell = neutralise(species)
    assert cell.startswith("'") and restore(cell) == species
    assert neutralise("red fox") == "red fox" == restore("red fox") and restore("'quoted") == "'quoted"


def test_the_book_round_trips_formulas_and_keeps_file_names_exact(tmp_path):
    book = AnswersBook(tmp_path / "answers.csv")
    changes = {(f"cam_a/=odd name {i}.jpg", i): s for i, s in enumerate(FORMULAS)}
    book.merge(changes, reviewed="2024-05-01 10:00:00", reviewer="=ann")
    rows = _cells(tmp_path / "answers.csv")
    assert all(r["Species"].startswith("'") for r in rows)
    assert [r["File"] for r in rows] == [f"=odd name {i}.jpg" for i in range(len(FORMULAS))]  # Timelapse matches these
    again = AnswersBook(tmp_path / "answers.csv").answers()
    assert {k: a.species for k, a in again.items()} == changes
    assert {a.species for a in read_answers(tmp_path / "answers.csv")} == set(FORMULAS)


def test_formulas_survive_a_file_read_and_written_again_and_again(tmp_path):
    """Every save re-reads the file (another tab, a restarted page): a cell is quoted once, however often."""
    path = tmp_path / "answers.csv"
    for n in range(3):
        AnswersBook(path).merge({("cam/x.jpg", n): "=1+1"}, reviewer="@lab")
    rows = _cells(path)
    assert [(r["Species"], r["Reviewer"]) for r in rows] == [("'=1+1", "'@lab")] * 3
    assert {(a.species, a.reviewer) for a in read_answers(path)} == {("=1+1", "@lab")}


def test_the_book_names_an_image_one_way(tmp_path):
    """'./cam/x.jpg' (a results file's spelling) and 'cam/x.jpg' are one image: answers saved under either are
    found again after a restart, and never doubled."""
    path = tmp_path / "answers.csv"
    AnswersBook(path).merge({("./cam/x.jpg", 0): "bear"})
    AnswersBook(path).merge({("cam/x.jpg", 0): "dog"})
    assert {k: a.species for k, a in AnswersBook(path).answers().items()} == {("cam/x.jpg", 0): "dog"}
    assert [(r["RelativePath"], r["File"]) for r in _cells(path)] == [("cam", "x.jpg")]


def test_the_book_keeps_other_rows_and_columns_and_withdraws_answers(tmp_path):
    path = tmp_path / "timelapse.csv"
    path.write_text("File,RelativePath,DateTime,Species,Notes\r\nimg1.jpg,cam_a,2024-05-01,bear,seen\r\n"
                    "img2.jpg,cam_a,2024-05-02,,\r\n")
    book = AnswersBook(path)
    book.merge({("cam_a/img2.jpg", 0): "dog", ("cam_a/img1.jpg", None): None})
    rows = _cells(path)
    assert [(r["File"], r["Detection"], r["Species"], r["DateTime"]) for r in rows] == [
        ("img2.jpg", "", "", "2024-05-02"), ("img2.jpg", "0", "dog", "")]
    assert list(rows[0]) == ["File", "RelativePath", "Detection", "Species", "DateTime", "Notes"]


@pytest.mark.parametrize("written", ["[WRONG BOX]", "[wrong  box]", " [Wrong Box] ", "[wrongbox]"])
def test_wrong_box_in_any_case_or_spacing_is_the_marker(tmp_path, written):
    write_answers(tmp_path / "a.csv", [Answer("", "cam/a.jpg", written, None, 0)])
    (answer,) = read_answers(tmp_path / "a.csv")
    assert answer.species == WRONG_BOX


@pytest.mark.parametrize("species", ["dog\nwolf", "dog\twolf", "dog\x1b[31m"])
def test_a_species_with_control_characters_is_refused_in_one_line(tmp_path, species):
    path = tmp_path / "a.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["File", "RelativePath", "Species"], ["a.jpg", "cam", species]])
    with pytest.raises(TrapkitError, match=r"a\.csv line 2: species .* holds control characters") as e:
        read_answers(path)
    assert "\n" not in str(e.value).replace(repr(species), "")


@pytest.mark.parametrize("label", ["", "  ", "dog\nwolf"])
def test_a_spec_refuses_an_empty_or_broken_label(label):
    with pytest.raises(TrapkitError, match="model spec label"):
        ModelSpec(arch="x", labels=("bear", label))


def test_the_labelling_page_api_refuses_a_newline_and_neutralises_formulas(tmp_path):
    from test_train_labels import make_run

    from trapkit.train import labels

    run = make_run(tmp_path)
    with pytest.raises(TrapkitError, match="holds control characters"):
        labels.save_answers(run.root, {"cam_a/img1.jpg": "dog\nwolf"}, allow_new_classes=True)
    labels.save_answers(run.root, {"cam_a/img1.jpg": "=1+1"}, allow_new_classes=True)
    path = labels.save_answers(run.root, {"cam_b/day 1/img3.jpg": "[Wrong Box]"}, allow_new_classes=True)
    cells = {r["File"]: r["Species"] for r in _cells(path)}
    assert cells == {"img1.jpg": "'=1+1", "img3.jpg": WRONG_BOX}
    assert {i.path: i.answered for i in labels.current_request(run.root)} == {
        "cam_a/img1.jpg": "=1+1", "cam_b/day 1/img3.jpg": WRONG_BOX}


def test_wrong_box_variants_never_become_classes_with_allow_new_classes(tmp_path):
    from test_train_labels import make_run

    from trapkit.train import labels

    run = make_run(tmp_path)
    df = run.load_manifest()
    answers = read_answers(_written(tmp_path, [["img1.jpg", "cam_a", "[wrong  box]"],
                                               ["img3.jpg", "cam_b/day 1", "[WRONG BOX]"]]))
    report = labels.ingest(df, answers, ["bear", "dog"], None, 2, allow_new_classes=True)
    assert report.new_classes == [] and report.wrong_boxes == 2


def _written(tmp_path, rows):
    path = tmp_path / "w.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["File", "RelativePath", "Species"], *rows])
    return path


@pytest.mark.slow
def test_classify_csv_and_features_csv_neutralise_species_cells(tmp_path, samples_dir):
    """A class named like a formula is written to `classify --csv` and `--features x.csv` as text Excel will not
    evaluate; reading the features table back restores it."""
    import torch

    from trapkit.export.onnx_export import export_onnx
    from trapkit.train.model import build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="test_efficientnet", labels=("=cmd|' /C calc'!A0", "@dog", "+cat"), feat_dim=8,
                     head_hidden=(8,), input_size=32)
    onnx = export_onnx(build_model(spec, "none").eval(), tmp_path / "model.onnx").path
    assert main(["classify", str(samples_dir), "--model", str(onnx), "--detections",
                 str(samples_dir / "md_v5a_detections.json"), "--out", str(tmp_path / "out.json"),
                 "--csv", str(tmp_path / "out.csv"), "--features", str(tmp_path / "features.csv")]) == 0
    for table in ("out.csv", "features.csv"):
        species = {r["label"] for r in _cells(tmp_path / table) if r["label"]}
        assert species and all(s.startswith("'") and restore(s) in spec.labels for s in species), table
    from trapkit.feature_table import read_features

    assert set(read_features(tmp_path / "features.csv").frame["label"].dropna()) <= set(spec.labels)  # restored
    assert set(json.loads((tmp_path / "out.json").read_text())["classification_categories"].values()) == set(spec.labels)
