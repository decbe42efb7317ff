"""Taxonomy through the stages: `trapkit export --taxonomy` (ONNX spec, Triton labels.txt, Hub card) and
`trapkit al init --taxonomy` (every model of the run carries it)."""

from __future__ import annotations

import json

import pytest
from cli_helpers import one_line_error
from train_helpers import FAST, make_trees

from trapkit.app.cli import main
from trapkit.graph import read_spec
from trapkit.spec import ModelSpec
from trapkit.train.run import Run

TAXA = {
    "bear": "f2d233e3-80e3-433d-9687-e29ecc7a467a;mammalia;carnivora;ursidae;ursus;americanus;American Black Bear",
    "cattle": ";mammalia;cetartiodactyla;bovidae;bos;taurus;domestic cattle",
    "dog": ";mammalia;carnivora;canidae;canis;lupus familiaris;domestic dog",
    "elephant": ";mammalia;proboscidea;elephantidae;loxodonta;africana;african elephant",
    "ocelot": ";mammalia;carnivora;felidae;leopardus;pardalis;ocelot",
}


def _csv(path, labels, rows=None):
    rows = rows if rows is not None else {label: TAXA[label] for label in labels}
    path.write_text("label,taxonomy\n" + "".join(f'{k},"{v}"\n' for k, v in rows.items()), encoding="utf-8")
    return path


def test_export_taxonomy_reaches_the_graph_triton_and_the_hub_card(tiny_model_dir, tmp_path):
    labels = ModelSpec.load(tiny_model_dir).labels
    out, repo, hub = tmp_path / "out", tmp_path / "repo", tmp_path / "hub"
    assert main(["export", str(tiny_model_dir), "--out", str(out), "--taxonomy", str(_csv(tmp_path / "t.csv", labels)),
                 "--triton", str(repo), "--name", "species", "--triton-backend", "python",
                 "--hub-folder", str(hub)]) == 0
    spec = read_spec(out / "model.onnx")
    assert spec.taxonomy == tuple(TAXA[x].lower() for x in labels)
    assert (repo / "species" / "labels.txt").read_text().splitlines() == [
        "american black bear", "domestic cattle", "domestic dog", "african elephant", "ocelot"]
    card = (hub / "README.md").read_text()
    assert "| 0 | bear | american black bear | ursus americanus | n/a |" in card
    assert "| 2 | dog | domestic dog | canis lupus familiaris | n/a |" in card
    config = json.loads((hub / "config.json").read_text())
    assert config["common_names"][1] == "domestic cattle" and config["label_names"] == list(labels)


@pytest.mark.parametrize("rows, message", [
    ({"bear": "mammalia;carnivora;ursidae;ursus;americanus"}, r"row 2 (bear) has 5 tokens, not 7"),
    ({**TAXA, "wolf": TAXA["dog"]}, "row 7 (wolf) name no class of the model"),
    ({k: TAXA[k] for k in ("bear", "cattle")}, "has no row for dog, elephant, ocelot"),
])
def test_export_bad_taxonomy_rows_are_one_line_and_nothing_is_written(tiny_model_dir, tmp_path, capsys, rows,
                                                                         message):
    path = _csv(tmp_path / "t.csv", (), rows)
    err = one_line_error(["export", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--taxonomy", str(path)], capsys)
    assert message in err
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    return make_trees(tmp_path_factory.mktemp("trees"))


def _init(trees, run, taxonomy):
    return ["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
            "--validation", str(trees["validation"]), "--batch", "4", "--taxonomy", str(taxonomy), *FAST]


def test_al_init_taxonomy_goes_into_every_model_of_the_run(trees, tmp_path):
    run = tmp_path / "run"
    assert main(_init(trees, run, _csv(tmp_path / "t.csv", ("bear", "cattle", "dog")))) == 0
    spec = ModelSpec.load(run / "model")
    assert spec.taxonomy == tuple(TAXA[x].lower() for x in ("bear", "cattle", "dog"))
    assert Run(run).taxonomy_path.read_text().splitlines()[0] == "label,taxonomy"
    # Exported without --taxonomy, the graph keeps the run's.
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert read_spec(tmp_path / "out" / "model.onnx").taxonomy == spec.taxonomy


def test_al_init_bad_taxonomy_stops_before_the_run_exists(trees, tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", (), {"bear": TAXA["bear"], "cattle": TAXA["cattle"]})
    err = one_line_error(_init(trees, tmp_path / "run", path), capsys)
    assert "has no row for dog; add one row per class" in err
    assert not (tmp_path / "run").exists()
