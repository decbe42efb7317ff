"""A round is one transaction: killed with SIGKILL at any point before its commit it leaves the run exactly as it
was (the answers wait in their files), killed after it the next command finishes it; no label is lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from train_helpers import FAST, make_trees, write_answers

from trapkit.app.cli import main
from trapkit.train import labels
from trapkit.train.run import KILL_ENV, Run

BEFORE_COMMIT = ("ingested", "finetuned", "embedded", "model-saved", "request-written")


def snapshot(run) -> dict[str, bytes]:
    """Every file that says what the run is: manifest, settings, state, the deployable model, the inbox."""
    r = Run(run)
    files = [r.manifest_path, r.settings_path, r.state_path, *sorted(r.model_dir.iterdir()),
             *sorted(r.inbox_dir.rglob("*.csv"))]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


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
    command = [sys.executable, "-m", "trapkit.app.cli", "al", "next", str(run), "--labels", str(extra)]
    before = snapshot(run)

    for stage in BEFORE_COMMIT:  # the same command, killed one stage later each time
        proc = subprocess.run(command, env={**os.environ, KILL_ENV: stage}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert snapshot(run) == before, stage  # nothing of the round reached the run

    # Killed just after the commit point: the next command finishes the commit before anything else.
    proc = subprocess.run(command, env={**os.environ, KILL_ENV: "committed"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert main(["al", "next", str(run)]) == 1  # finishes round 2; then nothing is new for a round 3
    r = Run(run)
    state = r.load_state()
    df = r.load_manifest()
    labelled = df[(df["split"] != "validation") & (df["label"] != "")]
    assert state.round == 2 and state.labels_at_round == len(labelled) == 12 + 6
    assert labelled["path"].is_unique and set(df.loc[df["label_round"] == 2, "path"]) == {*page, extra_path}
    _, selected = labels.read_request(r.request_path(2))
    assert len(selected) == 5 and not selected & set(labelled["path"])
    assert len(list((r.inbox_dir / "done").glob("*.csv"))) == 1 and not list(r.inbox_dir.glob("*.csv"))
    assert sorted(p.name for p in r.embeddings_dir.glob("*.npy")) == ["r002.npy"]
    assert not r.commit_dir.exists() and not list(run.rglob(".*.tmp"))
