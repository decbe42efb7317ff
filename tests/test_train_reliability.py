"""What a run folder survives: two commands at once, answers saved mid-round, killed runs, damaged or newer
state files, changed settings, bad file names, deleted images. One line for each user error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from train_helpers import FAST, make_trees, write_answers

from trapkit.app.cli import main
from trapkit.train import labels
from trapkit.train.run import KILL_ENV, KILL_SIGNAL_ENV
from trapkit.train.run import Run
from trapkit.train.settings import SETTINGS_FORMAT_VERSION


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    return make_trees(tmp_path_factory.mktemp("rel_trees"))


@pytest.fixture(scope="module")
def initialised(trees, tmp_path_factory):
    run = tmp_path_factory.mktemp("rel_run") / "run"
    assert main(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
                 "--validation", str(trees["validation"]), "--batch", "5", *FAST]) == 0
    return run


@pytest.fixture
def run(initialised, tmp_path):
    return shutil.copytree(initialised, tmp_path / "run")


def _al_next(run, *extra, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trapkit.app.cli", "al", "next", str(run), *extra],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _stopped(proc: subprocess.Popen) -> None:
    """Wait until `proc` has stopped itself (SIGSTOP at a test stage): an event, not a timeout."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), proc.stderr.read()


@pytest.mark.slow
def test_a_second_command_says_the_run_is_busy_and_a_mid_round_page_save_is_kept(run, trees, capsys):
    items = labels.current_request(run)
    labels.save_answers(run, {i.path: trees["truth"][i.path] for i in items[:3]})  # the page, before al next
    first = _al_next(run, env={KILL_ENV: "ingested", KILL_SIGNAL_ENV: "SIGSTOP"})
    try:
        _stopped(first)  # it holds the run's lock, between ingesting the inbox and moving it to inbox/done/
        assert main(["al", "next", str(run)]) == 1  # a second command, in this process
        err = capsys.readouterr().err
        assert f"{run} is busy: 'trapkit al next' (pid {first.pid}" in err and "wait for it to finish" in err
        # The person goes on labelling meanwhile: the page's save takes only the inbox lock, so it is not blocked.
        labels.save_answers(run, {items[3].path: trees["truth"][items[3].path]})
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    r = Run(run)
    assert r.load_state().round == 2
    # The page file changed after it was read, so it stayed in the inbox; the next round ingests the late answer.
    assert labels.page_answers_path(run).parent == r.inbox_dir
    assert (r.inbox_dir / "round-001-page.csv").is_file() and not list((r.inbox_dir / "done").glob("*.csv"))
    assert main(["al", "next", str(run)]) == 0
    df = r.load_manifest()
    pool = df[(df["split"] == "pool") & (df["label"] != "")]
    assert set(pool["path"]) == {i.path for i in items[:4]}
    assert not list(r.inbox_dir.glob("*.csv"))


@pytest.mark.slow
def test_a_round_that_adds_classes_gives_one_class_order_killed_or_not(run, trees, tmp_path):
    items = labels.current_request(run)
    # New classes in the answers, in an order that is not sorted: 'wolf' before 'fox'.
    answers = write_answers(tmp_path / "a.csv", {items[0].path: "wolf", items[1].path: "fox",
                                                 **{i.path: trees["truth"][i.path] for i in items[2:]}})
    whole = shutil.copytree(run, tmp_path / "uninterrupted")
    assert main(["al", "next", str(whole), "--labels", str(answers), "--allow-new-classes"]) == 0
    killed = _al_next(run, "--labels", str(answers), "--allow-new-classes", env={KILL_ENV: "ingested"})
    assert killed.wait(timeout=600) == -signal.SIGKILL
    assert main(["al", "next", str(run), "--labels", str(answers), "--allow-new-classes"]) == 0
    order = ("bear", "cattle", "dog", "fox", "wolf")
    for r in (Run(whole), Run(run)):
        assert tuple(r.load_state().classes) == order
        assert tuple(json.loads((r.model_dir / "spec.json").read_text())["labels"]) == order


def test_newer_or_damaged_state_files_are_refused_in_one_line(run, capsys):
    r = Run(run)
    state = json.loads(r.state_path.read_text())
    for change, message in (
        ({"format_version": 99}, "has format 99, newer than this trapkit understands (3); upgrade trapkit"),
        ({"round": "1"}, "field round must be a whole number, not \"1\""),
        ({"clases": ["bear"]}, "has unknown fields ['clases']"),
    ):
        r.state_path.write_text(json.dumps(state | change))
        assert main(["al", "status", str(run)]) == 1
        assert message in capsys.readouterr().err
    r.state_path.write_text(json.dumps(state))
    settings = json.loads(r.settings_path.read_text())
    r.settings_path.write_text(json.dumps(settings | {"format_version": SETTINGS_FORMAT_VERSION + 1}))
    assert main(["al", "next", str(run)]) == 1
    assert "run settings" in capsys.readouterr().err
    r.settings_path.write_text(json.dumps(settings))
    metrics = json.loads((r.round_dir(1) / "metrics.json").read_text())
    assert metrics["format_version"] == 2 and metrics["classes"] == ["bear", "cattle", "dog"] and "labels" not in metrics
    card = json.loads((r.model_dir / "metrics.json").read_text())
    assert card["labelled"] == metrics["labelled"] == 12 and "labels" not in card  # one meaning per key
    (r.round_dir(1) / "metrics.json").write_text(json.dumps(metrics | {"format_version": 7}))
    assert main(["al", "status", str(run)]) == 1
    assert "has format 7, newer than this trapkit understands" in capsys.readouterr().err


def test_a_failed_next_keeps_settings_and_clears_what_a_killed_run_left(run, capsys):
    r = Run(run)
    before = r.settings_path.read_bytes()
    stale = [r.root / ".manifest.csv.0a1b2c.tmp", r.embeddings_dir / ".r001.npy.4242.tmp",
             r.inbox_dir / ".round-001-page.csv.abcdef.tmp"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"\0" * 1000)
    assert main(["al", "next", str(run), "--batch", "7", "--strategy", "kcenter"]) == 1
    assert "no new labels" in capsys.readouterr().err
    assert r.settings_path.read_bytes() == before  # the flags of a failed round are not kept
    assert not any(p.exists() for p in stale)


def test_the_log_file_holds_debug_lines_and_the_traceback_of_a_user_error(run, capsys):
    log = Run(run).log_path
    text = log.read_text()
    assert "DEBUG trapkit.train.run: trapkit" in text and "al init" in text and "DEBUG trapkit.train.head" in text
    assert main(["al", "next", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # the terminal: one line
    added = log.read_text()[len(text):]
    assert "al next" in added and "command ended by TrapkitError" in added and "Traceback" in added
    assert "no new labels" in added


def test_embedder_weights_carry_their_settings_and_a_mismatch_is_one_line(run, trees, tmp_path, capsys):
    from safetensors import safe_open

    r = Run(run)
    version = r.load_state().embedder_version
    with safe_open(str(r.embedder_path(version)), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "test_efficientnet" and meta["feat_dim"] == "16" and meta["input_size"] == "32"
    settings = json.loads(r.settings_path.read_text())
    settings["model"]["feat_dim"] = 8  # edited by hand
    r.settings_path.write_text(json.dumps(settings))
    items = labels.current_request(run)
    labels.save_answers(run, {i.path: trees["truth"][i.path] for i in items})
    assert main(["al", "next", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"{r.embedder_path(version)} was trained with other model settings: feat_dim 16 (settings: 8)" in err
    assert err.count("\n") == 1


def test_file_names_that_are_not_utf8_are_refused_naming_the_file(trees, tmp_path, capsys):
    pool = shutil.copytree(trees["pool"], tmp_path / "pool")
    shutil.copy(next(pool.rglob("*.jpg")), os.fsencode(pool / "cam_a") + b"/caf\xe9.jpg")  # Latin-1 bytes
    assert main(["al", "init", str(tmp_path / "run"), "--labelled", str(trees["labelled"]), "--unlabelled", str(pool),
                 *FAST]) == 1
    err = capsys.readouterr().err
    assert "1 file name(s) under" in err and "'cam_a/caf\\udce9.jpg'" in err and "rename them" in err
    assert not (tmp_path / "run" / "manifest.csv").exists()


def test_a_deleted_pool_image_is_not_requested_again(run, trees, tmp_path):
    items = labels.current_request(run)
    labels.save_answers(run, {i.path: trees["truth"][i.path] for i in items[:2]})
    pool = shutil.copytree(trees["pool"], tmp_path / "pool")
    r = Run(run)
    settings = json.loads(r.settings_path.read_text())
    settings["data"]["unlabelled"] = str(pool)
    r.settings_path.write_text(json.dumps(settings))
    gone = [i.path for i in items[2:]]  # requested, unanswered: they would be carried over
    for p in gone:
        (pool / p).unlink()
    assert main(["al", "next", str(run)]) == 0  # no finetune is due, so the cached embeddings are used
    _, selected = labels.read_request(r.request_path(2))
    assert len(selected) == 5 and not selected & set(gone)
    df = r.load_manifest().set_index("path")
    assert all(df.loc[p, "status"] == "unreadable" and df.loc[p, "reason"].startswith("image missing") for p in gone)


def test_a_new_class_differing_only_in_case_is_warned_about(run, trees, tmp_path, capsys):
    items = labels.current_request(run)
    answers = write_answers(tmp_path / "a.csv", {items[0].path: "CATTLE",
                                                 **{i.path: trees["truth"][i.path] for i in items[1:]}})
    assert main(["al", "next", str(run), "--labels", str(answers), "--allow-new-classes"]) == 0
    out = capsys.readouterr().out
    assert "note: new class 'CATTLE' differs from 'cattle' only in case or spacing" in out


def test_every_settings_flag_is_an_option_and_every_option_a_setting():
    import argparse

    from trapkit.app.cli import build_parser
    from trapkit.train.settings import FLAGS

    def options(*path):
        parser = build_parser()
        for name in path:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return {a.dest for a in parser._actions if a.option_strings} - {"help", "verbose"}

    cluster = {"ray", "ray_actors"}  # where this command runs, not a setting of the run
    init, simulate, nxt = (options("al", name) - cluster for name in ("init", "simulate", "next"))
    assert init - {"config", "taxonomy"} == set(FLAGS) - {"validation_fraction"}
    assert simulate - {"config", "oracle", "budget", "out", "allow_new_classes"} == init - {"config", "taxonomy"}
    assert nxt - {"labels", "labels_root", "allow_new_classes", "rescan", "add_pool", "add_detections"} < set(FLAGS)
