"""The season loop, one command per step and no file edited by hand between them:

al init on season 1 -> export (Triton, Hub folder) -> classify season 2 (a folder outside the pool, with rollup)
-> answers on the review page (a rolled-up taxon confirmed, a wrong box, corrections) -> al next --add-pool
season 2 --labels those answers -> export again -> publish both exports. Then: Triton keeps version 1 intact
beside version 2 and the real server answers both; CHANGES.md gives per-class figures; the Hub folder and the
Hub repo have one changelog entry and one revision per export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from train_helpers import FAST, detection_flags, make_detection_trees

from trapkit.answers import WRONG_BOX, read_answers
from trapkit.app.cli import main
from trapkit.train.run import KILL_ENV, Run

pytestmark = pytest.mark.slow
TAXONOMY = {"bear": ";mammalia;carnivora;ursidae;ursus;americanus;american black bear",
            "cattle": ";mammalia;artiodactyla;bovidae;bos;taurus;domestic cattle",
            "dog": ";mammalia;carnivora;canidae;canis;familiaris;domestic dog"}
TOKEN = "hf_trapkitTestToken_4f9c2e7d1b"


def _season(tmp_path, name: str, seed: int) -> dict:
    """A second season's frames (new photos, the same cameras' naming) in a folder of its own, outside the pool."""
    made = make_detection_trees(tmp_path / f"{name}-source", bursts_per_class=2, seed=seed)
    shutil.move(str(made["pool"]), str(tmp_path / name))
    return {"folder": tmp_path / name, "md": made["pool_md"], "truth": made["truth"]}


def _taxonomy_csv(path):
    path.write_text("label,taxonomy\n" + "".join(f"{k},{v}\n" for k, v in TAXONOMY.items()))
    return path


def _review(results, images, answers, truth) -> dict[str, str]:
    """Answers as the review page saves them: `a` on a rolled-up crop keeps its taxon, one wrong box, the rest
    set to their true class (confirming or correcting the model)."""
    from trapkit.serve.review import open_review

    app = open_review(results, images, answers)
    try:
        taxa = set(app.source.taxa())
        rolled = [it for it in app.items if it.species in taxa]
        assert rolled and not taxa & set(app.source.classes())  # taxa are guesses to confirm, never number keys
        assert all(g["taxon"] == (g["name"] in taxa) for g in app.state()["groups"])
        changes = [{"key": it.key, "species": it.species} for it in rolled[:2]]  # confirmed as shown
        rest = [it for it in app.items if it not in rolled[:2]]
        changes.append({"key": rest[0].key, "species": WRONG_BOX})
        changes += [{"key": it.key, "species": truth[it.file]} for it in rest[1:]]
        app.decide(changes)
        return {c["key"]: c["species"] for c in changes}
    finally:
        app.close()


def _served(server_url: str, model: str, version: str | None, batch: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server_url.removeprefix("http://"))
    images = httpclient.InferInput("images", list(batch.shape), "UINT8")
    images.set_data_from_numpy(batch)
    kw = {"model_version": version} if version else {}
    return client.infer(model, [images], outputs=[httpclient.InferRequestedOutput("probs")], **kw).as_numpy("probs")


@pytest.fixture
def hub_server():
    from hub_server import HubServer

    with HubServer(TOKEN) as server:
        yield server


def test_two_seasons_round_the_loop_with_no_hand_edits(tmp_path, monkeypatch, hub_server):
    from triton_server import TritonServer

    from trapkit.export.onnx_export import ort_session, run_session
    from trapkit.graph import read_spec

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    trees = make_detection_trees(tmp_path / "season1")
    run, repo, hub = tmp_path / "serengeti", tmp_path / "model_repository", tmp_path / "hub"
    assert main(["al", "init", str(run), *detection_flags(trees, batch=6)]) == 0
    export = ["--triton", str(repo), "--triton-backend", "python", "--hub-folder", str(hub)]
    assert main(["export", str(run), "--out", str(tmp_path / "export1"), *export,
                 "--taxonomy", str(_taxonomy_csv(tmp_path / "taxonomy.csv"))]) == 0
    assert (run / "taxonomy.csv").is_file()  # the taxonomy is now the run's
    assert main(["publish", str(hub), "--repo-id", "lab/serengeti"]) == 0

    season = _season(tmp_path, "season2", seed=7)
    results = tmp_path / "season2_species.json"
    assert main(["classify", str(season["folder"]), "--model", str(tmp_path / "export1"), "--detections",
                 str(season["md"]), "--out", str(results), "--rollup", "0.99"]) == 0
    verified = tmp_path / "verified.csv"
    given = _review(results, season["folder"], verified, season["truth"])

    assert main(["al", "next", str(run), "--add-pool", str(season["folder"]), "--detections", str(results),
                 "--labels", str(verified), *FAST[-4:]]) == 0
    r = Run(run)
    df = r.load_manifest()
    added = df[df["added_round"] == 2]
    assert len(added) and (added["root"] == "season:season2").all() and added["path"].str.startswith("season2/").all()
    by_key = {f"{p.removeprefix('season2/')}#{d}": (label, taxon) for p, d, label, taxon in
              zip(added["path"], added["detection"], added["label"], added["taxon"])}
    taxa = {"mammalia", "carnivora", "artiodactyla", "ursidae", "canidae", "bovidae", "ursus", "bos", "canis", "animal"}
    for key, species in given.items():
        label, taxon = by_key[key]
        assert (taxon, label) == ((species, "") if species in taxa else ("", species)), key
    assert [a.species for a in read_answers(verified) if a.species in taxa]  # a taxon was confirmed as shown
    status = json.loads(subprocess.run([sys.executable, "-m", "trapkit.app.cli", "al", "status", str(run), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert sum(status["taxa"].values()) == sum(s in taxa for s in given.values())
    assert str(season["folder"]) in json.loads(r.settings_path.read_text())["data"]["seasons"]

    assert main(["export", str(run), "--out", str(tmp_path / "export2"), *export]) == 0
    assert main(["publish", str(hub), "--repo-id", "lab/serengeti"]) == 0

    # Triton: version 2 beside an intact version 1 of the same model (same classes), the run's name.
    model = repo / "serengeti"
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1", "2"]
    v1, v2 = (model / "1" / "model.onnx").read_bytes(), (model / "2" / "model.onnx").read_bytes()
    assert v1 == (tmp_path / "export1" / "model.onnx").read_bytes() != v2
    assert (model / "labels.txt").read_text().splitlines() == ["american black bear", "domestic cattle", "domestic dog"]
    assert "## Version 2: Export 2" in (model / "CHANGES.md").read_text() and (model / "README.md").is_file()
    # A re-export of the unchanged run adds nothing.
    assert main(["export", str(run), "--out", str(tmp_path / "export3"), *export]) == 0
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["1", "2"]

    # The change report: per-class figures, the season the labels came from, the previous model's field accuracy.
    changes = (tmp_path / "export2" / "CHANGES.md").read_text()
    assert "Against export 1 (round 1)" in changes and "season2 +" in changes
    for cls in TAXONOMY:
        assert f"| {cls} |" in changes
    report = json.loads((tmp_path / "export2" / "export_report.json").read_text())["changes"]
    field = report["field_accuracy"]
    assert field["on"] == "classifier output"  # the season as the review page showed it, not the round's picks
    assert field["verified"] == sum(s not in taxa and s != WRONG_BOX for s in given.values())
    assert set(report["labels_added"]) <= set(TAXONOMY) and report["validation"]["per_class"].keys() == TAXONOMY.keys()
    assert (tmp_path / "export2" / "field_confusion.png").read_bytes()[:4] == b"\x89PNG"

    # The Hub folder: two changelog entries, newest first, and the card shows the latest changes; common names kept.
    changelog = (hub / "CHANGELOG.md").read_text()
    assert changelog.count("\n## Export ") == 2 and changelog.index("## Export 2") < changelog.index("## Export 1")
    assert json.loads((hub / "config.json").read_text())["common_names"][0] == "american black bear"
    assert "## What changed: Export 2: round 2" in (hub / "README.md").read_text()

    # The real server loads both versions and each answers as its own graph does.
    batch = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with TritonServer(repo, workdir=tmp_path / "server") as server:
        for version, path in (("1", model / "1" / "model.onnx"), ("2", model / "2" / "model.onnx")):
            expected, _ = run_session(ort_session(path), batch)
            np.testing.assert_allclose(_served(server.url, "serengeti", version, batch), expected, atol=1e-5)
        newest, _ = run_session(ort_session(model / "2" / "model.onnx"), batch)
        np.testing.assert_allclose(_served(server.url, "serengeti", None, batch), newest, atol=1e-5)
        # The Triton README's tritonclient example, run as written against this server on the season's photos.
        readme = (model / "README.md").read_text()
        snippet = re.search(r"or, with tritonclient alone.*?```python\n(.*?)```", readme, re.S).group(1)
        work = tmp_path / "client"
        work.mkdir()
        (work / "photos").symlink_to(season["folder"])
        shutil.copy(season["md"], work / "md.json")
        (work / "client.py").write_text(snippet.replace("localhost:8000", server.url.removeprefix("http://")))
        printed = subprocess.run([sys.executable, "client.py"], cwd=work, capture_output=True, text=True, check=True)
    answered = [line.split(" ") for line in printed.stdout.splitlines()]
    assert len(answered) == len(by_key) and {label for *_, label, _ in answered} <= set(TAXONOMY)
    assert read_spec(model / "1" / "model.onnx").labels == tuple(TAXONOMY)

    # Each export was published as a revision of the same repo, its changelog entry the commit message.
    messages = [c.message for c in hub_server.state.repos["lab/serengeti"].commits.values()]
    assert [m.split(":")[0] for m in messages[-2:]] == ["Export 1", "Export 2"]
    assert messages[-1].startswith("Export 2: round 2")


def test_a_new_class_makes_a_new_triton_model_and_old_versions_keep_their_classes(tmp_path, caplog):
    trees = make_detection_trees(tmp_path / "season1")
    run, repo = tmp_path / "study", tmp_path / "repo"
    assert main(["al", "init", str(run), *detection_flags(trees, batch=4), "--taxonomy",
                 str(_taxonomy_csv(tmp_path / "taxonomy.csv"))]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "e1"), "--triton", str(repo)]) == 0
    before = {p.name: p.read_bytes() for p in (repo / "study").rglob("*") if p.is_file()}
    from trapkit.train import labels

    items = labels.current_request(run)
    labels.save_answers(run, {items[0].key: "fox", **{it.key: trees["truth"][it.path] for it in items[1:]}},
                        allow_new_classes=True)
    assert main(["al", "next", str(run), "--allow-new-classes", *FAST[-4:]]) == 0
    caplog.clear()
    assert main(["export", str(run), "--out", str(tmp_path / "e2"), "--triton", str(repo)]) == 0
    said = [r.getMessage() for r in caplog.records if "has no row for fox" in r.getMessage()]
    assert len(said) == 1 and "no common name and no rollup until you add a row" in said[0]  # one line, naming it
    after = {p.name: p.read_bytes() for p in (repo / "study").rglob("*") if p.is_file()}
    assert after == before  # labels.txt, config.pbtxt and version 1 of the 3-class model untouched
    assert (repo / "study-2" / "labels.txt").read_text().splitlines() == [
        "american black bear", "domestic cattle", "domestic dog", "fox"]
    assert sorted(p.name for p in (repo / "study-2").iterdir() if p.is_dir()) == ["1"]
    # With --name naming the old model, the export is refused in one line that says how.
    assert main(["export", str(run), "--out", str(tmp_path / "e3"), "--triton", str(repo), "--name", "study"]) == 1


def test_a_kill_during_add_pool_leaves_the_run_as_it_was(tmp_path):
    trees = make_detection_trees(tmp_path / "season1")
    run = tmp_path / "run"
    assert main(["al", "init", str(run), *detection_flags(trees, batch=4)]) == 0
    season = _season(tmp_path, "season2", seed=3)
    r = Run(run)
    files = [r.manifest_path, r.settings_path, r.state_path, *sorted(r.model_dir.iterdir())]
    before = {p: p.read_bytes() for p in files}
    command = [sys.executable, "-m", "trapkit.app.cli", "al", "next", str(run), "--add-pool", str(season["folder"]),
               "--detections", str(season["md"]), *FAST[-4:]]
    for stage in ("embedded", "request-written"):
        proc = subprocess.run(command, env={**os.environ, KILL_ENV: stage}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert {p: p.read_bytes() for p in files} == before, stage  # no item, season or setting was added
    assert main(command[3:]) == 0
    df = r.load_manifest()
    assert (df["root"] == "season:season2").sum() == sum(season_items(season))
    assert r.load_state().round == 2


def season_items(season) -> list[int]:
    """Qualifying detections per image of a season's MegaDetector file (threshold 0.1, animals)."""
    doc = json.loads(season["md"].read_text())
    return [sum(d["category"] == "1" and d["conf"] >= 0.1 for d in im["detections"]) for im in doc["images"]]
