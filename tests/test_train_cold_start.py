"""`al init` without `--labelled`: round 1 covers the pool, its answers name the classes, round 2 trains."""

from __future__ import annotations

import json

import pytest
from train_helpers import FAST, make_trees, write_answers

from trapkit.app.cli import main
from trapkit.train import labels
from trapkit.train.label_page import LabelSource, item_key
from trapkit.train.run import Run


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    return make_trees(tmp_path_factory.mktemp("cold_trees"), seed_per_class=0, val_per_class=3, pool_per_class=10)


@pytest.mark.slow
def test_a_run_without_a_seed_asks_a_covering_batch_then_trains_on_its_answers(trees, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["al", "init", str(run), "--unlabelled", str(trees["pool"]), "--batch", "9", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "round 1: 0 labels" in printed and "no model was trained" in printed
    assert "typiclust" in printed and "held out" in printed  # where validation will come from
    r = Run(run)
    state = r.load_state()
    assert state.round == 1 and state.classes == () and state.embedder_version == "base"  # not finetuned yet
    assert not (run / "model").exists()  # nothing to deploy yet
    pool_paths, selected = labels.read_request(r.request_path(1))
    assert len(selected) == 9 and len(pool_paths) == 30
    items = labels.current_request(run)
    assert all(it.guess is None for it in items)  # no model, no guess
    covered = {trees["truth"][it.path] for it in items}
    assert covered == {"bear", "cattle", "dog"}  # the cover reaches every class of the pool

    status = _status(run, capsys)
    assert status["round"] == 1 and status["labels_per_class"] == {} and status["metrics"] == {}
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 1
    assert "has no model yet: label the items its current request asks about" in capsys.readouterr().err

    # The first answers name the classes (no --allow-new-classes needed while there are none), on the labelling
    # page or in a CSV; 20% of each class with 3+ answers is held out as the validation set.
    page = LabelSource(run)
    assert page.allow_new_classes and page.classes() == []
    first = items[0]
    page.save({item_key(*first.key): trees["truth"][first.path]})
    answers = write_answers(tmp_path / "a.csv", {it.path: trees["truth"][it.path] for it in items[1:]})
    assert main(["al", "next", str(run), "--labels", str(answers)]) == 0
    printed = capsys.readouterr().out
    assert "round 2:" in printed and "held out as the validation set" in printed
    state = r.load_state()
    assert state.round == 2 and state.classes == ("bear", "cattle", "dog")
    assert not LabelSource(run).allow_new_classes  # the classes are known now: a new one needs the flag
    df = r.load_manifest()
    held = df[(df["split"] == "validation")]
    trained = df[(df["split"] == "pool") & (df["label"] != "")]
    assert len(held) >= 1 and len(held) + len(trained) == 9 and set(held["root"]) == {"unlabelled"}
    card = json.loads((run / "model" / "metrics.json").read_text())
    assert card["round"] == 2 and card["labelled"] == len(trained) and card["accuracy"] is not None
    assert card["validation_images"] == len(held)
    assert state.embedder_version == "r002"  # the first finetune: on the first answers
    _, selected = labels.read_request(r.request_path(2))
    assert len(selected) == 9 and not selected & set(df.loc[df["label"] != "", "path"])
    # Held-out items are never asked about again, and answering them again changes nothing.
    answers = write_answers(tmp_path / "a.csv", {it.path: trees["truth"][it.path] for it in items})
    assert main(["al", "next", str(run), "--labels", str(answers)]) == 1
    assert "no new labels" in capsys.readouterr().err


@pytest.mark.slow
def test_a_validation_folder_names_the_classes_from_the_start(trees, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["al", "init", str(run), "--unlabelled", str(trees["pool"]), "--validation", str(trees["validation"]),
                 "--batch", "6", "--first-strategy", "kcenter", *FAST]) == 0
    assert "Validation: --validation" in capsys.readouterr().out
    r = Run(run)
    assert r.load_state().classes == ("bear", "cattle", "dog")
    items = labels.current_request(run)
    with pytest.raises(Exception, match="unknown class names"):  # known classes: a new name needs the flag
        labels.save_answers(run, {items[0].path: "wolf"})
    labels.save_answers(run, {it.path: trees["truth"][it.path] for it in items})
    assert main(["al", "next", str(run)]) == 0
    df = r.load_manifest()
    validation = df[df["split"] == "validation"]
    assert len(validation) == 9 and set(validation["root"]) == {"validation"}  # the folder's, none held out


def test_a_taxonomy_without_any_class_name_is_refused(trees, tmp_path, capsys):
    tax = tmp_path / "tax.csv"
    tax.write_text("label,taxonomy\n")
    assert main(["al", "init", str(tmp_path / "run"), "--unlabelled", str(trees["pool"]), "--taxonomy", str(tax),
                 *FAST]) == 1
    assert "--taxonomy needs the run's class names" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # margin needs a model: not a choice for round 1
        main(["al", "init", str(tmp_path / "run"), "--unlabelled", str(trees["pool"]), "--first-strategy", "margin"])
    assert "invalid choice: 'margin'" in capsys.readouterr().err


def _status(run, capsys) -> dict:
    assert main(["al", "status", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_first_strategy_and_semi_settings_resolve_and_are_checked():
    from trapkit.errors import TrapkitError
    from trapkit.train.settings import resolve

    s = resolve(None, {"first_strategy": "kcenter", "semi_supervised": True})
    assert s.select.first_strategy == "kcenter" and s.head.semi_supervised and s.format_version == 5
    with pytest.raises(TrapkitError, match="needs no model"):
        resolve(None, {"first_strategy": "margin"})
    base = resolve(None, {})
    base.head.semi_weight = -1
    with pytest.raises(TrapkitError, match="semi_weight -1"):
        resolve(base=base)

