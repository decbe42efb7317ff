"""`trapkit al init/next/status/simulate` end to end on tiny real image trees, in-process through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_helpers import FAST, make_trees, write_answers

from trapkit.app.cli import main
from trapkit.train import labels
from trapkit.train.run import Run


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("al_trees")
    t = make_trees(root)
    (t["pool"] / "broken").mkdir()
    (t["pool"] / "broken" / "empty.jpg").write_bytes(b"")
    (t["pool"] / "broken" / "garbage.jpg").write_bytes(b"\xff\xd8 this is not a jpeg" * 20)
    return t


@pytest.fixture(scope="module")
def initialised(trees, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("al_run") / "run"
    rc = main(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
               "--validation", str(trees["validation"]), "--batch", "5", "--finetune-every", "4", *FAST])
    assert rc == 0
    return run


@pytest.fixture
def run(initialised, tmp_path) -> Path:
    """A private copy of a run right after `al init` (round 1 written)."""
    dst = tmp_path / "run"
    shutil.copytree(initialised, dst)
    return dst


def test_init_writes_model_metrics_request_and_records_unreadable_images(run):
    r = Run(run)
    state = r.load_state()
    assert state.round == 1 and state.classes == ("bear", "cattle", "dog")
    spec = json.loads((run / "model" / "spec.json").read_text())
    assert spec["labels"] == ["bear", "cattle", "dog"] and spec["input_size"] == 32 and spec["feat_dim"] == 16
    card = json.loads((run / "model" / "metrics.json").read_text())
    assert card["round"] == 1 and card["labelled"] == 12 and 0.0 <= card["accuracy"] <= 1.0
    assert set(card["per_class_recall"]) == {"bear", "cattle", "dog"}
    for name in ("metrics.json", "confusion.csv", "confusion.png", "settings.json"):
        assert (run / "rounds" / "001" / name).is_file()
    df = r.load_manifest()
    bad = df[df["status"] == "unreadable"].set_index("path")
    assert set(bad.index) == {"broken/empty.jpg", "broken/garbage.jpg"}
    assert "empty file" in bad.loc["broken/empty.jpg", "reason"]
    pool_paths, selected = labels.read_request(r.request_path(1))
    assert len(selected) == 5 and len(pool_paths) == 24 and not any(p.startswith("broken/") for p in pool_paths)


def test_next_ingests_dirty_csv_and_unselected_labels(run, trees, tmp_path, capsys):
    items = labels.current_request(run)
    answers = {i.path: trees["truth"][i.path] for i in items}
    extra = next(p for p in trees["truth"] if p not in answers)
    answers[extra] = trees["truth"][extra]  # a person labelled one more image than asked
    csv = write_answers(tmp_path / "export.csv", answers, backslash=True, bom=True, crlf=True, extra=True,
                        reorder=True, selected={i.path for i in items})
    assert main(["al", "next", str(run), "--labels", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "6 new label(s)" in out and "1 on items that were not requested (kept)" in out
    r = Run(run)
    df = r.load_manifest()
    assert (df.loc[df["split"] == "pool", "label"] != "").sum() == 6
    assert r.load_state().round == 2
    _, selected = labels.read_request(r.request_path(2))
    assert len(selected) == 5 and not selected & set(answers)
    assert json.loads((run / "model" / "metrics.json").read_text())["labelled"] == 18
    assert main(["al", "status", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["round"] == 2 and sum(status["labels_per_class"].values()) == 18 and status["unreadable"] == 2


def test_status_and_the_round_report_show_what_is_known_per_class(run, trees, tmp_path, capsys):
    items = labels.current_request(run)
    csv = write_answers(tmp_path / "a.csv", {i.path: trees["truth"][i.path] for i in items})
    assert main(["al", "next", str(run), "--labels", str(csv)]) == 0
    report = capsys.readouterr().out
    assert main(["al", "status", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    per_class = status["per_class"]
    assert set(per_class) == {"bear", "cattle", "dog"}
    assert {c: k["labels"] for c, k in per_class.items()} == status["labels_per_class"]  # all trained on
    card = json.loads((run / "model" / "metrics.json").read_text())
    assert {c: k["recall"] for c, k in per_class.items()} == card["per_class_recall"]
    assert sum(k["pool"] for k in per_class.values()) == status["pool_unlabelled"]  # every unlabelled item once
    assert sum(k["asked"] for k in per_class.values()) == 5  # the batch, by the model's guess
    assert main(["al", "status", str(run)]) == 0
    for printed in (report, capsys.readouterr().out):
        assert "pool (model)" in printed and "asked next" in printed
        row = next(line for line in printed.splitlines() if line.strip().startswith("bear "))
        k = per_class["bear"]
        assert row.split()[1:] == [str(k["labels"]), f"{k['recall']:.3f}", str(k["pool"]), str(k["asked"])]


def test_partial_answers_keep_the_rest_requested(run, trees):
    items = labels.current_request(run)
    labels.save_answers(run, {i.path: trees["truth"][i.path] for i in items[:2]})  # the labelling page, half done
    assert main(["al", "next", str(run), "--batch", "4"]) == 0
    r = Run(run)
    _, selected = labels.read_request(r.request_path(2))
    rest = {i.path for i in items[2:]}
    assert rest <= selected and len(selected) == 4  # 3 carried over + 1 new pick
    assert not list(r.inbox_dir.glob("*.csv")) and list((r.inbox_dir / "done").glob("*.csv"))


def test_unknown_class_errors_then_allow_new_classes_grows_the_head(run, trees, tmp_path, capsys):
    items = labels.current_request(run)
    answers = {i.path: trees["truth"][i.path] for i in items}
    answers[items[0].path] = "wolf"
    csv = write_answers(tmp_path / "a.csv", answers)
    assert main(["al", "next", str(run), "--labels", str(csv)]) == 1
    err = capsys.readouterr().err
    assert "unknown class names (a.csv line 2: 'wolf')" in err and "--allow-new-classes" in err
    assert Run(run).load_state().round == 1
    assert main(["al", "next", str(run), "--labels", str(csv), "--allow-new-classes"]) == 0
    spec = json.loads((run / "model" / "spec.json").read_text())
    assert spec["labels"] == ["bear", "cattle", "dog", "wolf"]
    from trapkit.train.model import load_model

    assert load_model(run / "model").head.num_classes == 4


def test_next_without_new_labels_says_what_to_do(run, capsys):
    assert main(["al", "next", str(run)]) == 1
    assert "no new labels; fill the Species column" in capsys.readouterr().err


def test_bad_labelled_folder_loose_images_and_empty_classes(trees, tmp_path, capsys):
    rc = main(["al", "init", str(tmp_path / "r1"), "--labelled", str(tmp_path / "nope"),
               "--unlabelled", str(trees["pool"]), *FAST])
    assert rc == 1 and "--labelled folder" in capsys.readouterr().err
    seed = tmp_path / "seed"
    shutil.copytree(trees["labelled"], seed)
    shutil.copy(seed / "bear" / "bear_0.jpg", seed / "loose.jpg")
    (seed / "wolf").mkdir()
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(seed / "bear" / "bear_0.jpg", flat / "x.jpg")
    assert main(["al", "init", str(tmp_path / "r2"), "--labelled", str(flat),
                 "--unlabelled", str(trees["pool"]), *FAST]) == 1
    assert "no class folders with images" in capsys.readouterr().err
    assert main(["al", "init", str(tmp_path / "r3"), "--labelled", str(seed), "--unlabelled", str(trees["pool"]),
                 "--batch", "3", *FAST]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) directly in" in out and "loose.jpg" in out and "wolf has no images" in out
    assert main(["al", "status", str(tmp_path / "r3")]) == 0
    assert "wolf has no images" in capsys.readouterr().out
    assert main(["al", "init", str(tmp_path / "r3"), "--labelled", str(seed), "--unlabelled", str(trees["pool"]),
                 *FAST]) == 1
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_writes_a_learning_curve(trees, tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["al", "simulate", "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
                 "--validation", str(trees["validation"]), "--oracle", str(trees["oracle"]), "--budget", "8",
                 "--batch", "5", "--strategy", "kcenter", "--seed", "3", "--out", str(out), "--loss", "triplet",
                 *FAST]) == 0
    lines = (out / "curve.csv").read_text().splitlines()
    assert lines[0] == "labels,accuracy,macro_recall,strategy,seed"
    assert [int(x.split(",")[0]) for x in lines[1:]] == [12, 17, 20]
    assert all(x.endswith(",kcenter,3") for x in lines[1:])
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("warm", [False, True])
def test_each_round_fits_a_fresh_head_unless_warm_start_is_set(trees, tmp_path, monkeypatch, warm):
    from trapkit.train import semi
    from trapkit.train.model import load_model

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"head": {"warm_start": warm}}))
    run = tmp_path / "run"  # no fine-tuning: the embedder stays the same, so only the setting decides
    assert main(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
                 "--validation", str(trees["validation"]), "--batch", "5", "--config", str(config), *FAST,
                 "--finetune-epochs", "0"]) == 0
    first = load_model(run / "model").head.state_dict()
    starts, fit = [], semi.fit_round_head

    def recording(*args, init=None, **kwargs):  # the real fit, noting what it started from
        starts.append(init)
        return fit(*args, init=init, **kwargs)

    monkeypatch.setattr(semi, "fit_round_head", recording)
    csv = write_answers(tmp_path / "a.csv", {i.path: trees["truth"][i.path] for i in labels.current_request(run)})
    assert main(["al", "next", str(run), "--labels", str(csv)]) == 0
    assert len(starts) == 1 and (starts[0] is not None) == warm
    if warm:
        assert all((starts[0].state_dict()[k] == v).all() for k, v in first.items())


def test_rescan_adds_new_pool_images_after_the_start(run, trees, tmp_path):
    r = Run(run)
    settings = r.settings()
    pool = tmp_path / "pool"
    shutil.copytree(trees["pool"], pool)
    settings.data.unlabelled = str(pool)
    settings.save(r.settings_path)
    (pool / "cam_c").mkdir()
    for i, src in enumerate(sorted((pool / "cam_a").glob("*.jpg"))[:2]):
        shutil.copy(src, pool / "cam_c" / f"new_{i}.jpg")
    assert main(["al", "next", str(run), "--rescan"]) == 0
    df = r.load_manifest()
    assert {"cam_c/new_0.jpg", "cam_c/new_1.jpg"} <= set(df["path"])
    from trapkit.train.embed import open_embeddings

    assert len(open_embeddings(r.embeddings_path(r.load_state().embedder_version))) == len(df)
    pool_paths, _ = labels.read_request(r.request_path(2))
    assert "cam_c/new_0.jpg" in pool_paths


def test_relative_folders_are_stored_absolute(tmp_path, monkeypatch):
    from trapkit.train.settings import resolve

    monkeypatch.chdir(tmp_path)
    s = resolve(flags={"labelled": "seed", "unlabelled": "pool", "validation": None})
    assert s.data.labelled == str(tmp_path / "seed") and s.data.unlabelled == str(tmp_path / "pool")
    assert s.data.validation is None


def test_a_missing_image_folder_stops_the_round_and_keeps_the_answers(run, trees, tmp_path, capsys):
    r = Run(run)
    settings = r.settings()
    settings.data.unlabelled = str(tmp_path / "unplugged")  # the pool's drive is not mounted
    settings.save(r.settings_path)
    items = labels.current_request(run)
    labels.save_answers(run, {i.path: trees["truth"][i.path] for i in items})
    assert main(["al", "next", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"the unlabelled image folder {tmp_path / 'unplugged'} is missing; reconnect its drive" in err
    df = r.load_manifest()
    assert (df["status"] == "unreadable").sum() == 2  # the two broken files only: nothing newly marked
    assert (df.loc[df["split"] == "pool", "label"] != "").sum() == 0  # a failed round changes nothing in the run
    assert len(list(r.inbox_dir.glob("*.csv"))) == 1  # and the answers wait in the inbox
    settings.data.unlabelled = str(trees["pool"])  # plugged back in
    settings.save(r.settings_path)
    assert main(["al", "next", str(run)]) == 0
    assert r.load_state().round == 2 and json.loads((run / "model" / "metrics.json").read_text())["labelled"] == 17


def test_a_moved_request_does_not_block_the_next_round(run, trees, tmp_path):
    items = labels.current_request(run)
    csv = write_answers(tmp_path / "a.csv", {i.path: trees["truth"][i.path] for i in items})
    Run(run).request_path(1).rename(tmp_path / "round-001.csv")
    assert main(["al", "next", str(run), "--labels", str(csv)]) == 0
    assert Run(run).load_state().round == 2


def test_a_lower_batch_trims_the_unanswered_carry_over(run, trees):
    items = labels.current_request(run)
    labels.save_answers(run, {items[0].path: trees["truth"][items[0].path]})
    assert main(["al", "next", str(run), "--batch", "2"]) == 0
    _, selected = labels.read_request(Run(run).request_path(2))
    assert len(selected) == 2 and selected <= {i.path for i in items[1:]}


def test_a_tiny_seed_without_validation_reports_no_metrics_and_follows_pool_links(trees, tmp_path, capsys):
    small = make_trees(tmp_path / "small", seed_per_class=2, pool_per_class=3)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(trees["labelled"] / "dog" / "dog_0.jpg", outside / "dog.jpg")
    (small["pool"] / "linked.jpg").symlink_to(outside / "dog.jpg")  # a pool built from links is the user's own
    oracle = write_answers(tmp_path / "oracle.csv", small["truth"] | {"linked.jpg": "dog"})
    out = tmp_path / "sim"
    assert main(["al", "simulate", "--labelled", str(small["labelled"]), "--unlabelled", str(small["pool"]),
                 "--oracle", str(oracle), "--budget", "8", "--batch", "2", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "     6       n/a           n/a" in printed
    df = Run(out).load_manifest()
    assert df.set_index("path").loc["linked.jpg", "status"] == "ok"
    assert json.loads((out / "model" / "metrics.json").read_text())["accuracy"] is None
    lines = (out / "curve.csv").read_text().splitlines()
    assert lines[1:] == [f"{n},,,margin,0" for n in (6, 8, 10, 12, 14)]
    assert main(["al", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "latest: accuracy n/a" in status and "metrics are not measured (give --validation)" in status
    assert "stopping" not in status  # five rounds of "0.000" would have read as levelled off


@pytest.mark.slow
def test_progress_lines_reach_a_log_file_and_the_runs_log(trees, tmp_path):
    """Sent to a file (nohup, Slurm), `al init` says how far its long steps are: lines with the count done, the
    total and the time left, on stderr and in RUN/trapkit.log (TRAPKIT_PROGRESS_SECONDS=0: a line per update)."""
    import os
    import re
    import subprocess
    import sys

    run = tmp_path / "run"
    with open(tmp_path / "stderr.log", "w") as err:  # a file, not a terminal
        subprocess.run([sys.executable, "-m", "trapkit.app.cli", "al", "init", str(run), "--labelled",
                        str(trees["labelled"]), "--unlabelled", str(trees["pool"]), "--validation",
                        str(trees["validation"]), *FAST], stderr=err, stdout=subprocess.DEVNULL, check=True,
                       env={**os.environ, "TRAPKIT_PROGRESS_SECONDS": "0"})
    line = re.compile(r"embedding: \d+ of (\d+) items \(\d+%\), 0:\d\d:\d\d so far")
    logged = (tmp_path / "stderr.log").read_text()
    assert line.search(logged) and int(line.search(logged).group(1)) == len(Run(run).load_manifest())  # every item
    assert line.search((run / "trapkit.log").read_text())
    assert "fine-tuning: " in logged and "\x1b" not in logged and "\r" not in logged  # no bar drawn into a file
