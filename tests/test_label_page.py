"""The labelling page against a real run made by `trapkit al init`: grid, save, resume, errors."""

from __future__ import annotations

import shutil

import pytest
from train_helpers import FAST, make_trees
from web_helpers import client, launched

from trapkit.cli import main
from trapkit.errors import TrapkitError
from trapkit.train import labels
from trapkit.train.run import Run

CLASSES = ("bear", "cattle", "dog")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A round-1 run over a 24-image pool asking for 6 labels (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("label_page")
    trees = make_trees(root, classes=CLASSES)
    run = root / "run"
    assert main(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
                 "--validation", str(trees["validation"]), "--batch", "6", *FAST]) == 0
    return run


@pytest.fixture
def run_copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def _ingest(run):
    """Apply the page's answers file to the manifest exactly as `al next` does with an answers CSV."""
    r = Run(run)
    state = r.load_state()
    _, requested = labels.read_request(r.request_path(state.round))
    answers = labels.read_answers(labels.page_answers_path(run))
    df = r.load_manifest()
    report = labels.ingest(df, answers, list(state.classes), requested, state.round + 1)
    return report, df


@pytest.mark.slow
def test_page_saves_answers_and_resumes_where_the_person_stopped(run_copy):
    from gradio_client.exceptions import AppError

    from trapkit.train.label_page import build_label_page

    items = labels.current_request(run_copy)
    assert len(items) == 6 and all(it.guess in CLASSES for it in items)
    with launched(build_label_page(run_copy), allowed_paths=()) as url:
        c = client(url)
        progress, grid, path, image, about, species, status = c.predict(api_name="/refresh")
        assert "0 of 6 answered" in progress and grid["selected_index"] == 0
        grid = grid["value"]  # the grid comes with the index of the image being answered
        assert [g["caption"] for g in grid] == [f"guess {it.guess} {it.confidence:.2f}" for it in items]
        assert path == items[0].path and species == items[0].guess and image

        progress, grid, path, *_, status = c.predict(items[0].path, "cattle", api_name="/save")
        assert "1 of 6 answered" in progress and path == items[1].path and grid["selected_index"] == 1
        assert grid["value"][0]["caption"].startswith("✓ cattle") and status == f"Saved {items[0].path}: cattle"
        c.predict(items[2].path, "dog", api_name="/save")
        with pytest.raises(AppError, match="unknown class names \\['zebra'\\]"):
            c.predict(items[1].path, "zebra", api_name="/save")

        # A new visitor (a reloaded tab) sees the saved answers and starts at the first unanswered image.
        progress, grid, path, *_ = client(url).predict(api_name="/refresh")
        assert "2 of 6 answered" in progress and path == items[1].path
        assert [g["caption"].startswith("✓") for g in grid["value"]] == [True, False, True, False, False, False]

    report, df = _ingest(run_copy)
    assert report.new == 2
    got = dict(zip(df["path"], df["label"]))
    assert got[items[0].path] == "cattle" and got[items[2].path] == "dog"


@pytest.mark.slow  # shares the run fixture (an `al init`)
def test_new_class_names_only_when_allowed(run_copy):
    from trapkit.train.label_page import LabelPage

    first = labels.current_request(run_copy)[0].path
    with pytest.raises(TrapkitError, match="unknown class names"):
        LabelPage(run_copy).save(first, "wolf")
    LabelPage(run_copy, allow_new_classes=True).save(first, "wolf")
    assert labels.current_request(run_copy)[0].answered == "wolf"
    LabelPage(run_copy).save(first, "")  # an empty answer removes it
    assert labels.current_request(run_copy)[0].answered is None


def test_next_unanswered_wraps_around():
    from trapkit.train.label_page import next_index

    items = [labels.RequestItem("", f"{i}.jpg", None, None, a) for i, a in enumerate([None, "dog", None, "dog"])]
    assert next_index(items) == 0
    assert next_index(items, 0) == 2
    assert next_index(items, 2) == 0
    done = [labels.RequestItem("", "a.jpg", None, None, "dog")] * 3
    assert next_index(done, 1) == 1


def test_label_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["label", str(tmp_path)]) == 1
    assert "is not a trapkit run" in capsys.readouterr().err
    assert main(["label", str(tmp_path), "--port", "70000"]) == 1
    assert "--port 70000 is not a port number" in capsys.readouterr().err


@pytest.mark.slow  # shares the run fixture (an `al init`)
def test_unreadable_or_escaping_images_show_a_grey_tile(run_dir):
    from trapkit.train.label_page import THUMB_SIZE, LabelPage

    page = LabelPage(run_dir)
    for bad in ("cam_a/missing.jpg", "../labelled/bear/bear_0.jpg"):
        tile = page.image(bad, THUMB_SIZE)
        assert tile.size == (THUMB_SIZE, THUMB_SIZE) and tile.getextrema() == ((128, 128),) * 3
    good = page.thumb(labels.current_request(run_dir)[0].path)
    assert max(good.size) <= THUMB_SIZE and good.getextrema() != ((128, 128),) * 3
