"""A round killed with SIGKILL at every stage resumes on the next `al next`, losing and duplicating no label."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from train_helpers import FAST, make_trees, write_answers

from trapkit.app.cli import main
from trapkit.train import labels
from trapkit.train.loop import KILL_ENV
from trapkit.train.run import Run

STAGES = ("ingested", "inbox-moved", "finetuned", "embedded", "model-saved", "request-written")


@pytest.mark.slow
def test_sigkill_at_every_stage_then_resume(tmp_path):
    trees = make_trees(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
                 "--validation", str(trees["validation"]), "--batch", "5", "--finetune-every", "3", *FAST]) == 0
    items = labels.current_request(run)
    page = {i.path: trees["truth"][i.path] for i in items}
    labels.save_answers(run, page)  # answers from the labelling page, waiting in the inbox
    extra_path = next(p for p in trees["truth"] if p not in page)
    extra = write_answers(tmp_path / "extra.csv", {extra_path: trees["truth"][extra_path]})
    command = [sys.executable, "-m", "trapkit.app", "al", "next", str(run), "--labels", str(extra)]

    for stage in STAGES:  # the same command, killed one stage later each time
        proc = subprocess.run(command, env={**os.environ, KILL_ENV: stage}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        r = Run(run)
        assert r.load_state().round == 1  # nothing committed yet
        df = r.load_manifest()
        pool = df[(df["split"] == "pool") & (df["label"] != "")]
        assert dict(zip(pool["path"], pool["label"])) == {**page, extra_path: trees["truth"][extra_path]}
        assert set(pool["label_round"]) == {2}
        assert not list(run.rglob(".*.tmp"))  # stages sit between atomic writes: no torn files

    assert main(command[3:]) == 0  # resume in-process
    r = Run(run)
    state = r.load_state()
    df = r.load_manifest()
    labelled = df[(df["split"] != "validation") & (df["label"] != "")]
    assert state.round == 2 and state.labels_at_round == len(labelled) == 12 + 6
    assert labelled["path"].is_unique
    _, selected = labels.read_request(r.request_path(2))
    assert len(selected) == 5 and not selected & set(labelled["path"])
    assert len(list((r.inbox_dir / "done").glob("*.csv"))) == 1 and not list(r.inbox_dir.glob("*.csv"))
    assert sorted(p.name for p in r.embeddings_dir.glob("*.npy")) == ["r002.npy"]
