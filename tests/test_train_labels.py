"""Timelapse label round trip: requests, dirty answer CSVs, ingestion rules, and the labelling page's API."""

from __future__ import annotations

import pandas as pd
import pytest
from train_helpers import write_answers

from trapkit.answers import read_answers
from trapkit.errors import TrapkitError
from trapkit.train import labels
from trapkit.train.run import Run, RunState
from trapkit.train.settings import RunSettings

POOL = ["cam_a/img1.jpg", "cam_a/img2.jpg", "cam_b/day 1/img3.jpg", "img4.jpg"]
ANSWERS = {"cam_a/img1.jpg": "bear", "cam_b/day 1/img3.jpg": "dog", "img4.jpg": "bear"}


def manifest(classes=("bear", "dog")) -> pd.DataFrame:
    rows = [("seed", "labelled", f"{c}/s.jpg", c, 0, "ok", "") for c in classes]
    rows += [("pool", "unlabelled", p, "", -1, "ok", "") for p in POOL]
    df = pd.DataFrame(rows, columns=["split", "root", "path", "label", "label_round", "status", "reason"])
    df["detection"], df["bbox"], df["time"], df["added_round"], df["prior_guess"], df["prior_confidence"] = \
        "", "", "", 1, "", ""
    return df


@pytest.mark.parametrize("dirt", [
    {}, {"bom": True}, {"crlf": True}, {"backslash": True}, {"extra": True}, {"reorder": True},
    {"bom": True, "crlf": True, "backslash": True, "extra": True, "reorder": True},
])
def test_answers_parse_through_excel_and_windows_dirt(tmp_path, dirt):
    path = write_answers(tmp_path / "answers.csv", ANSWERS, **dirt)
    got = {a.path: a.species for a in read_answers(path)}
    assert got == ANSWERS


def test_answers_in_cp1252_with_semicolons_and_blank_species(tmp_path):
    text = "RelativePath;File;Species;Notes\r\ncam_a;img1.jpg;bear;caf\xe9\r\ncam_a;img2.jpg;;\r\n"
    path = tmp_path / "excel.csv"
    path.write_bytes(text.encode("cp1252"))
    answers = read_answers(path)
    assert [(a.path, a.species) for a in answers] == [("cam_a/img1.jpg", "bear")]  # blank = not answered yet
    assert answers[0].selected is None


def test_answers_saved_as_excel_unicode_text(tmp_path):
    text = "File\tRelativePath\tSpecies\r\nimg1.jpg\tcam_a\tbear\r\nimg3.jpg\tcam_b\\day 1\tdog\r\n"
    path = tmp_path / "unicode.txt"
    path.write_bytes(text.encode("utf-16"))  # with its byte-order mark, as Excel writes it
    assert {a.path: a.species for a in read_answers(path)} == {"cam_a/img1.jpg": "bear",
                                                                      "cam_b/day 1/img3.jpg": "dog"}


def test_answers_with_a_quote_never_closed_name_the_line(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('File,Species\nimg1.jpg,"bear\n' + "img2.jpg,dog\n" * 20_000)
    with pytest.raises(TrapkitError, match=r"broken.csv line \d+ is not valid CSV .*check its quotes"):
        read_answers(path)


def test_answers_without_species_column_say_what_to_do(tmp_path):
    path = tmp_path / "request.csv"
    labels.write_request(path, POOL, {"img4.jpg"})
    with pytest.raises(TrapkitError, match="no 'Species' column"):
        read_answers(path)
    with pytest.raises(TrapkitError, match="does not exist"):
        read_answers(tmp_path / "missing.csv")


def test_request_round_trip_keeps_paths_and_selection(tmp_path):
    path = tmp_path / "round-001.csv"
    labels.write_request(path, POOL, {"cam_b/day 1/img3.jpg", "img4.jpg"})
    raw = path.read_bytes()
    assert raw.startswith(b"File,RelativePath,Selected\r\n") and b"cam_b\\day 1" in raw  # Timelapse's shape
    paths, selected = labels.read_request(path)
    assert paths == POOL and selected == {"cam_b/day 1/img3.jpg", "img4.jpg"}


def test_ingest_counts_new_already_and_unselected(tmp_path):
    df, classes = manifest(), ["bear", "dog"]
    answers = read_answers(write_answers(tmp_path / "a.csv", ANSWERS, backslash=True))
    report = labels.ingest(df, answers, classes, requested={"cam_a/img1.jpg", "cam_b/day 1/img3.jpg"}, round_n=2)
    assert (report.new, report.unselected, report.already) == (3, 1, 0)
    pool = df[df["split"] == "pool"].set_index("path")
    assert pool.loc["img4.jpg", "label"] == "bear" and pool.loc["img4.jpg", "label_round"] == 2
    assert pool.loc["cam_a/img2.jpg", "label"] == ""  # not answered: stays unlabelled
    again = labels.ingest(df, answers, classes, requested=set(), round_n=3)
    assert (again.new, again.already) == (0, 3)  # re-ingesting the same file duplicates nothing
    assert (df["label"] != "").sum() == 2 + 3


def test_unknown_class_is_an_error_naming_the_rows_unless_allowed(tmp_path):
    df, classes = manifest(), ["bear", "dog"]
    answers = read_answers(write_answers(tmp_path / "a.csv", {**ANSWERS, "cam_a/img2.jpg": "ocelot"}))
    with pytest.raises(TrapkitError, match=r"a\.csv line 5: 'ocelot'.*--allow-new-classes"):
        labels.ingest(df, answers, classes, set(), 2)
    assert (df["label"] != "").sum() == 2  # all or nothing: nothing applied
    report = labels.ingest(df, answers, classes, set(), 2, allow_new_classes=True)
    assert report.new_classes == ["ocelot"] and classes == ["bear", "dog"]  # the head's order is decided elsewhere
    from trapkit.train.loop import head_classes

    assert head_classes(classes, df) == ("bear", "dog", "ocelot")


def test_unknown_image_and_conflicting_answers_are_errors(tmp_path):
    df, classes = manifest(), ["bear", "dog"]
    stray = read_answers(write_answers(tmp_path / "a.csv", {"cam_z/nope.jpg": "bear"}))
    with pytest.raises(TrapkitError, match="not in the pool.*cam_z/nope.jpg"):
        labels.ingest(df, stray, classes, set(), 2)
    first = read_answers(write_answers(tmp_path / "b.csv", {"img4.jpg": "bear"}))
    second = read_answers(write_answers(tmp_path / "c.csv", {"img4.jpg": "dog"}))
    with pytest.raises(TrapkitError, match="two different answers"):
        labels.ingest(df, first + second, classes, set(), 2)


def make_run(tmp_path) -> Run:
    """A run folder with state, settings and a round-1 request, as `al init` leaves it."""
    run = Run(tmp_path / "run")
    run.root.mkdir()
    settings = RunSettings()
    settings.data.labelled, settings.data.unlabelled = str(tmp_path / "seed"), str(tmp_path / "pool")
    settings.save(run.settings_path)
    run.save_manifest(manifest())
    run.save_state(RunState(round=1, classes=("bear", "dog")))
    labels.write_request(run.request_path(1), POOL, {"cam_a/img1.jpg", "cam_b/day 1/img3.jpg"})
    labels.write_guesses(run.guesses_path(1), [labels.Guess("cam_a/img1.jpg", None, None, "dog", 0.51),
                                               labels.Guess("cam_b/day 1/img3.jpg", None, None, "bear", 0.7)])
    return run


def test_page_api_lists_request_with_guesses_and_merges_answers(tmp_path):
    run = make_run(tmp_path)
    assert labels.class_names(run.root) == ["bear", "dog"]
    assert run.pool_file("cam_a/img1.jpg") == (tmp_path / "pool").resolve() / "cam_a" / "img1.jpg"
    items = labels.current_request(run.root)
    assert [(i.relative_path, i.file, i.guess, i.confidence, i.answered) for i in items] == [
        ("cam_a", "img1.jpg", "dog", 0.51, None), ("cam_b/day 1", "img3.jpg", "bear", 0.7, None)]
    assert all(i.detection is None and i.bbox is None and i.key == (i.path, None) for i in items)  # whole images
    saved = labels.save_answers(run.root, {"cam_a/img1.jpg": "bear"})
    assert saved.parent == run.inbox_dir
    labels.save_answers(run.root, {"cam_b\\day 1\\img3.jpg": "dog"})  # resume later: merged
    assert {i.path: i.answered for i in labels.current_request(run.root)} == {
        "cam_a/img1.jpg": "bear", "cam_b/day 1/img3.jpg": "dog"}
    labels.save_answers(run.root, {"cam_a/img1.jpg": ""})  # '' withdraws an answer
    assert {i.path: i.answered for i in labels.current_request(run.root)} == {
        "cam_a/img1.jpg": None, "cam_b/day 1/img3.jpg": "dog"}
    labels.save_answers(run.root, {"cam_a/img1.jpg": "bear"})
    # The page's file is ingested exactly like a CSV answer.
    df = run.load_manifest()
    report = labels.ingest(df, read_answers(saved), ["bear", "dog"], {"cam_a/img1.jpg"}, 2)
    assert report.new == 2 and set(df.loc[df["label_round"] == 2, "path"]) == {"cam_a/img1.jpg", "cam_b/day 1/img3.jpg"}


def test_page_api_refuses_unknown_images_and_classes(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(TrapkitError, match="not selected in the current request: ../etc/passwd"):
        labels.save_answers(run.root, {"../etc/passwd": "bear"})
    with pytest.raises(TrapkitError, match="unknown class names"):
        labels.save_answers(run.root, {"cam_a/img1.jpg": "unicorn"})
    assert not labels.page_answers_path(run.root).exists()


def test_page_api_refuses_answers_for_pool_images_the_request_did_not_select(tmp_path):
    run = make_run(tmp_path)
    # img4.jpg is in the pool (and the request CSV), but not selected: the page never shows it.
    with pytest.raises(TrapkitError, match=r"not selected in the current request: img4\.jpg; the labelling page "
                                           r"answers only what the round asks about .*al next --labels"):
        labels.save_answers(run.root, {"img4.jpg": "dog"})
    with pytest.raises(TrapkitError, match="not selected in the current request: cam_a/img1.jpg detection 0"):
        labels.save_answers(run.root, {("cam_a/img1.jpg", 0): "dog"})  # a whole-image run has no detections
    assert not labels.page_answers_path(run.root).exists()
