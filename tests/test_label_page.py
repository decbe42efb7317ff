"""The labelling page (the verification grid over a round's request) against a real run made by `trapkit al init`:
keys in a real Chromium, answers in the inbox file, resume, a new round, errors."""

from __future__ import annotations

import shutil

import pytest
from review_helpers import browser, press
from train_helpers import FAST, make_trees

from trapkit.app.cli import main
from trapkit.answers import read_answers
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
    answers = read_answers(labels.page_answers_path(run))
    df = r.load_manifest()
    report = labels.ingest(df, answers, list(state.classes), requested, state.round + 1)
    return report, df


def _rows(run) -> dict[str, str]:
    path = labels.page_answers_path(run)
    return {a.path: a.species for a in read_answers(path)} if path.exists() else {}


@pytest.mark.slow
def test_keys_save_answers_into_the_inbox_and_the_page_resumes_where_the_person_stopped(run_copy):
    from trapkit import grid
    from trapkit.train.label_page import open_label_page

    items = labels.current_request(run_copy)
    assert len(items) == 6 and all(it.guess in CLASSES for it in items)
    app = open_label_page(run_copy)
    server = grid.start(app)
    try:
        shown = [it["key"] for it in app.page(None, "high", None, 0)["items"]]
        guess = {it.path: it.guess for it in items}
        groups = [g["name"] for g in app.state()["groups"]]
        with browser() as (new_page, left_machine):
            page = new_page(server.url)
            # The model's guess is the species each crop shows.
            assert [sp for _, sp in _tiles(page)] == [guess[k] for k in shown]
            legend = page.inner_text("#keys")
            assert all(key in legend for key, _ in grid.KEYS)
            press(page, "ArrowRight", "Space", "ArrowRight", "Space", "1")
            expected = {shown[1]: groups[0], shown[2]: groups[0]}
            assert _rows(run_copy) == expected
            press(page, "ArrowRight", "/")  # search every class
            page.keyboard.type("catt")
            press(page, "Enter")
            expected[shown[3]] = "cattle"
            assert _rows(run_copy) == expected
            press(page, "u")  # undo: the answer is withdrawn from the inbox file
            del expected[shown[3]]
            assert _rows(run_copy) == expected
            press(page, "e")  # no capture times: the crop is its own sequence and keeps the model's guess
            expected[shown[3]] = guess[shown[3]]
            assert _rows(run_copy) == expected
            assert left_machine == []
        server.close()

        # Restarted and reopened: the saved answers show and the cursor waits on the first unanswered crop.
        server = grid.start(open_label_page(run_copy))
        with browser() as (new_page, left_machine):
            page = new_page(server.url)
            tiles = _tiles(page)
            assert [("answered" in c or "changed" in c) for c, _ in tiles] == [k in expected for k in shown]
            assert "cursor" in tiles[0][0]  # shown[0] was never answered
            press(page, "a")  # accept the rest as guessed
            expected.update({k: guess[k] for k in shown if k not in expected})
            assert _rows(run_copy) == expected
            assert left_machine == []
    finally:
        server.close()

    report, df = _ingest(run_copy)  # what `al next` does with the inbox file
    assert report.new == 6
    got = dict(zip(df["path"], df["label"]))
    assert {k: got[k] for k in shown} == expected


@pytest.mark.slow  # shares the run fixture (an `al init`)
def test_new_class_names_only_when_allowed(run_copy):
    from trapkit.train.label_page import open_label_page

    app = open_label_page(run_copy)
    first = app.items[0].key
    with pytest.raises(TrapkitError, match="unknown class 'wolf'"):
        app.decide([{"key": first, "species": "wolf"}])
    allowing = open_label_page(run_copy, allow_new_classes=True)
    allowing.decide([{"key": first, "species": "wolf"}])
    assert {it.path: it.answered for it in labels.current_request(run_copy)}[first] == "wolf"
    allowing.decide([{"key": first, "species": None}])  # undo withdraws it
    assert {it.path: it.answered for it in labels.current_request(run_copy)}[first] is None
    # "[wrong box]" never becomes a class, even where new classes are allowed.
    from trapkit.answers import WRONG_BOX

    allowing.decide([{"key": first, "species": WRONG_BOX}])
    assert {it.path: it.answered for it in labels.current_request(run_copy)}[first] == WRONG_BOX
    assert labels.class_names(run_copy) == list(CLASSES)


@pytest.mark.slow  # shares the run fixture (an `al init`)
def test_the_page_opens_where_work_is_left_and_follows_a_new_round(run_copy):
    from trapkit.train.label_page import open_label_page

    app = open_label_page(run_copy)
    keys = [it["key"] for it in app.page(None, "high", None, 0, 2)["items"]]
    app.decide([{"key": k, "species": "dog"} for k in keys])
    assert app.page(None, "high", None, -1, 2)["page"] == 1
    # `al next` moves the run on: the page's state shows the new round's request.
    assert main(["al", "next", str(run_copy), "--batch", "4", *FAST[-4:]]) == 0
    state = app.state()
    assert state["total"] == 4 and state["done"] == 0 and "round 2" in state["title"]


def test_label_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["label", str(tmp_path)]) == 1
    assert "is not a trapkit run" in capsys.readouterr().err
    assert main(["label", str(tmp_path), "--port", "70000"]) == 1
    assert "--port 70000 is not a port number" in capsys.readouterr().err


@pytest.mark.slow  # shares the run fixture (an `al init`)
def test_unreadable_or_escaping_images_show_a_grey_tile(run_dir):
    from trapkit.grid import GridItem
    from trapkit.train.label_page import LabelSource

    source = LabelSource(run_dir)
    for bad in ("cam_a/missing.jpg", "../labelled/bear/bear_0.jpg"):
        (tile,) = source.crops(bad, [GridItem(bad, bad, None, None, None, None)], 64)
        assert tile.size == (64, 64) and tile.getextrema() == ((128, 128),) * 3
    (good,) = source.crops(source.items()[0].file, source.items()[:1], 64)
    assert good.size == (64, 64) and good.getextrema() != ((128, 128),) * 3


def _tiles(page) -> list[tuple[str, str]]:
    return page.eval_on_selector_all("#grid .tile",
                                     "ts => ts.map(t => [t.className, t.querySelector('.sp').textContent])")


def test_a_seasons_rolled_up_first_guess_is_a_taxon_to_confirm(tmp_path):
    """A season's first round shows the classifier's guesses, a rollup's taxon among them: the page offers it as a
    guess to confirm or refine (never a number key), and confirming it saves it."""
    from test_train_labels import make_run

    from trapkit.train.label_page import open_label_page

    run = make_run(tmp_path)
    labels.write_guesses(run.guesses_path(1), [labels.Guess("cam_a/img1.jpg", None, None, "canidae", 0.8),
                                               labels.Guess("cam_b/day 1/img3.jpg", None, None, "bear", 0.7)])
    app = open_label_page(run.root)
    assert app.source.taxa() == ["canidae"] and "canidae" not in app.source.classes()
    assert [g["taxon"] for g in app.state()["groups"] if g["name"] == "canidae"] == [True]
    app.decide([{"key": "cam_a/img1.jpg", "species": "canidae"}])  # `a` on the page: as shown
    assert {it.path: it.answered for it in labels.current_request(run.root)}["cam_a/img1.jpg"] == "canidae"
    with pytest.raises(TrapkitError, match="unknown class 'felidae'"):
        app.decide([{"key": "cam_a/img1.jpg", "species": "felidae"}])
