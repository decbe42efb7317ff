"""Hub folder: config.json in timm's shape, a model card the huggingface_hub client reads (its examples run in
tests/test_export_usage.py)."""

from __future__ import annotations

import json

import pytest

from trapkit.export.hub_folder import HubSettings, write_hub_folder
from trapkit.spec import ModelSpec

METRICS = {"round": 3, "labels": 40, "accuracy": 0.8125, "macro_precision": 0.7, "macro_recall": 0.75,
           "per_class_recall": {"bear": 1.0, "dog": 0.5}, "validation_images": 16}


@pytest.fixture
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec.load(tiny_model_dir)


def test_config_json(tmp_path, tiny_onnx_path, spec):
    folder = write_hub_folder(tiny_onnx_path, spec, HubSettings(tmp_path / "hub"))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet"
    assert config["num_classes"] == 5 and config["num_features"] == 16
    assert config["label_names"] == list(spec.labels)
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == list(spec.mean) and config["pretrained_cfg"]["std"] == list(spec.std)
    assert ModelSpec.from_dict(config["trapkit_spec"]) == spec
    assert (folder / "model.onnx").read_bytes() == tiny_onnx_path.read_bytes()


def test_model_card_metadata_and_tables(tmp_path, tiny_onnx_path, spec):
    from huggingface_hub import ModelCard

    folder = write_hub_folder(tiny_onnx_path, spec, HubSettings(tmp_path / "hub", license="cc-by-4.0"), METRICS)
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.pipeline_tag == "image-classification"
    assert data.library_name == "onnx" and data.license == "cc-by-4.0"
    assert "trapkit" in data.tags and "camera-traps" in data.tags
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {"Accuracy": 0.8125, "Macro precision": 0.7, "Macro recall": 0.75}
    assert all(r.task_type == "image-classification" for r in data.eval_results)
    text = card.text
    assert "| 0 | bear | 1.000 |" in text and "| 2 | dog | 0.500 |" in text and "| 1 | cattle | n/a |" in text
    assert "accuracy 0.812" in text
    for section in ("Use with trapkit", "Use with onnxruntime alone", "Use with Triton Inference Server"):
        assert f"## {section}" in text


def test_card_without_metrics_has_no_model_index(tmp_path, tiny_onnx_path, spec):
    from huggingface_hub import ModelCard

    folder = write_hub_folder(tiny_onnx_path, spec, HubSettings(tmp_path / "hub"))
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None and "model-index" not in (folder / "README.md").read_text()
    assert "| 4 | ocelot | n/a |" in card.text


def test_a_label_with_a_pipe_stays_in_its_table_cell(tmp_path, tiny_onnx_path, spec):
    odd = spec.replace(labels=(spec.labels[0], "grey | red fox", *spec.labels[2:]))
    folder = write_hub_folder(tiny_onnx_path, odd, HubSettings(tmp_path / "hub"))
    row = next(line for line in (folder / "README.md").read_text().splitlines() if line.startswith("| 1 |"))
    assert row == "| 1 | grey \\| red fox | n/a |"


def test_the_newest_changelog_entry_is_found_whatever_the_header(tmp_path):
    from trapkit.graph import latest_changelog_entry

    (tmp_path / "CHANGELOG.md").write_text("## Export 2: round 4\n\nnew labels\n\n## Export 1: round 1\n\nfirst\n")
    assert latest_changelog_entry(tmp_path) == ("Export 2: round 4", "new labels")
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n\nintro\n\n## Export 3: round 5\n\nmore\n## Export 2\n")
    assert latest_changelog_entry(tmp_path) == ("Export 3: round 5", "more")
    assert latest_changelog_entry(tmp_path / "absent") is None
