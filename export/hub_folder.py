"""A folder ready to upload to the Hugging Face Hub: model.onnx, config.json, README.md.

`config.json` is the model spec plus timm's field names (`architecture`,
`num_classes`, `label_names`, `pretrained_cfg` with `input_size` [3, S, S],
`mean`, `std`), so tools that read timm configs find what they expect.
`README.md` is a model card: YAML metadata (`library_name`, `pipeline_tag`,
tags, license, and a `model-index` with the last validation round's metrics
when the source run has `metrics.json`), then usage with trapkit, with
onnxruntime alone and with Triton, the class list and per-class recall.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from trapkit.atomic import atomic_copy, atomic_write_bytes, atomic_write_json, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.export.changes import Changes, cell as _cell
from trapkit.export.usage import usage_sections
from trapkit.graph import (CARD_FILENAME, CHANGELOG_FILENAME, CONFIG_FILENAME, INPUT_NAME, ONNX_FILENAME, OUTPUT_NAMES,
                           latest_changelog_entry)
from trapkit.spec import ModelSpec
from trapkit.taxonomy import display_names, parse_taxon


log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.json"
FIELD_CONFUSION_FILENAME = "field_confusion.png"
CHANGELOG_HEADER = "# Changelog\n\nOne entry per `trapkit export`, newest first.\n\n"
TAGS = ("trapkit", "onnx", "image-classification", "camera-traps", "ecology", "biology")


@dataclass(frozen=True)
class HubSettings:
    folder: Path
    license: str = "other"


def read_metrics(model_dir: Path | None) -> dict | None:
    """The validation metrics saved beside a trained model (RUN/model/metrics.json), if any."""
    path = model_dir / METRICS_FILENAME if model_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrapkitError(f"{path} is not readable JSON ({e.__class__.__name__}); delete it or rerun the round") from None
    return metrics if isinstance(metrics, dict) else None


def hub_config(spec: ModelSpec, embedding_dim: int) -> dict:
    """config.json: timm-style fields first, the full trapkit spec under `trapkit_spec`."""
    config = {
        "architecture": spec.arch,
        "num_classes": spec.num_classes,
        "num_features": embedding_dim,
        "label_names": list(spec.labels),
        "pretrained_cfg": {
            "input_size": [3, spec.input_size, spec.input_size],
            "mean": list(spec.mean),
            "std": list(spec.std),
            "interpolation": spec.interpolation,
            "crop_pct": 1.0,
            "crop_mode": "center" if spec.resize_mode == "center_crop" else "squash",
            "num_classes": spec.num_classes,
        },
        "model_file": ONNX_FILENAME,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", spec.input_size, spec.input_size, 3],
                  "note": "RGB, 0-255; mean/std normalisation is inside the graph"},
        "outputs": {OUTPUT_NAMES[0]: ["batch", spec.num_classes], OUTPUT_NAMES[1]: ["batch", embedding_dim]},
        "trapkit_spec": spec.to_dict(),
    }
    if spec.taxonomy:
        config["label_descriptions"] = dict(zip(spec.labels, spec.taxonomy))
        config["common_names"] = display_names(spec.labels, spec.taxonomy)
    return config


def write_hub_folder(onnx_path: str | Path, spec: ModelSpec, settings: HubSettings, metrics: dict | None = None,
                     on_detections: bool = True, changes: Changes | None = None) -> Path:
    """Write model.onnx, config.json and README.md into `settings.folder`, and add this export's entry at the top
    of its CHANGELOG.md (with `field_confusion.png`); returns the folder. The changelog's newest entry is the
    commit message `trapkit publish` gives the Hub revision."""
    from trapkit.export.triton import graph_io

    folder = Path(settings.folder)
    _, outputs = graph_io(onnx_path)
    embedding_dim = next(t.dims[0] for t in outputs if t.name == "embedding")
    try:
        atomic_copy(onnx_path, folder / ONNX_FILENAME)
        atomic_write_json(folder / CONFIG_FILENAME, hub_config(spec, embedding_dim), indent=2)
        if changes is not None:
            add_changelog_entry(folder / CHANGELOG_FILENAME, changes)
            if changes.confusion_png is not None:
                atomic_write_bytes(folder / FIELD_CONFUSION_FILENAME, changes.confusion_png)
        latest = latest_changelog_entry(folder)  # an unchanged re-export keeps showing the last change
        atomic_write_text(folder / CARD_FILENAME, model_card(spec, embedding_dim, settings.license, metrics,
                                                             on_detections, latest))
    except OSError as e:
        raise TrapkitError(f"cannot write the Hub folder {folder} ({e.strerror or e}); choose a writable --hub-folder") from None
    log.info("Hub folder written to %s (upload with: trapkit publish %s --repo-id OWNER/%s)", folder, folder, spec.name)
    return folder


def model_card(spec: ModelSpec, embedding_dim: int, license: str, metrics: dict | None, on_detections: bool = True,
               latest_changes: tuple[str, str] | None = None) -> str:
    return "\n".join([front_matter(spec, license, metrics),
                      body(spec, embedding_dim, metrics, on_detections, latest_changes)])


def _q(value) -> str:
    # JSON strings and numbers are valid YAML scalars: safe quoting for any label.
    return json.dumps(value)


def front_matter(spec: ModelSpec, license: str, metrics: dict | None) -> str:
    lines = ["---", "library_name: onnx", "pipeline_tag: image-classification", f"license: {_q(license)}", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    scored = [(key, kind, name) for key, kind, name in (
        ("accuracy", "accuracy", "Accuracy"),
        ("macro_precision", "precision", "Macro precision"),
        ("macro_recall", "recall", "Macro recall"),
    ) if metrics and isinstance(metrics.get(key), (int, float))]
    if scored:
        lines += [
            "model-index:",
            f"- name: {_q(spec.name)}",
            "  results:",
            "  - task:",
            "      type: image-classification",
            "      name: Image Classification",
            "    dataset:",
            "      type: imagefolder",
            f"      name: {_q('trapkit validation set' + _round_note(metrics))}",
            "    metrics:",
        ]
        for key, kind, name in scored:
            lines += [f"    - type: {kind}", f"      value: {round(float(metrics[key]), 4)}", f"      name: {_q(name)}"]
            if key.startswith("macro_"):
                lines += ["      args:", "        average: macro"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _round_note(metrics: dict) -> str:
    parts = []
    if "round" in metrics:
        parts.append(f"round {metrics['round']}")
    if "validation_images" in metrics:
        parts.append(f"{metrics['validation_images']} images")
    return f" ({', '.join(parts)})" if parts else ""


def body(spec: ModelSpec, embedding_dim: int, metrics: dict | None, on_detections: bool = True,
         latest_changes: tuple[str, str] | None = None) -> str:
    s = spec.input_size
    recall = (metrics or {}).get("per_class_recall") or {}
    if isinstance(recall, list):
        recall = dict(zip(spec.labels, recall))
    # With a taxonomy the table shows each class's common name and scientific name too.
    names = display_names(spec.labels, spec.taxonomy)
    latin = [parse_taxon(t).latin for t in spec.taxonomy] if spec.taxonomy else None
    rows = "\n".join(
        f"| {i} | {_cell(label)} |"
        + (f" {_cell(names[i])} | {_cell(latin[i]) if latin[i] else ''} |" if latin else "")
        + (f" {recall[label]:.3f} |" if isinstance(recall.get(label), (int, float)) else " n/a |")
        for i, label in enumerate(spec.labels)
    )
    header = ("| index | class | common name | scientific name | recall |\n| --- | --- | --- | --- | --- |" if latin
              else "| index | class | recall |\n| --- | --- | --- |")
    changes = f"\n## What changed: {latest_changes[0]}\n\n{latest_changes[1]}\n\nEvery export: `{CHANGELOG_FILENAME}`.\n" \
        if latest_changes else ""
    summary = ""
    if metrics and isinstance(metrics.get("accuracy"), (int, float)):
        summary = (f"\nOn the held-out validation set{_round_note(metrics)}: accuracy {metrics['accuracy']:.3f}"
                   + (f", macro recall {metrics['macro_recall']:.3f}" if isinstance(metrics.get("macro_recall"), (int, float)) else "")
                   + ".\n")
    return f"""# {spec.name}

A {spec.num_classes}-class image classifier ({spec.arch} backbone) trained with
[trapkit](https://github.com/trapkit/trapkit), exported as one ONNX graph:
input `images` uint8 (N, {s}, {s}, 3) RGB; outputs `probs` (N, {spec.num_classes}) and
`embedding` (N, {embedding_dim}). Normalisation (mean {list(spec.mean)}, std {list(spec.std)}) is inside the
graph: feed raw pixels, prepared as below.
{summary}
{usage_sections(spec, spec.name, on_detections)}
## Classes and per-class recall

{header}
{rows}
{changes}"""


def add_changelog_entry(path: Path, changes: Changes) -> None:
    """Put this export's entry at the top of a CHANGELOG.md (the header kept, older entries below)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    entries = old[len(CHANGELOG_HEADER):] if old.startswith(CHANGELOG_HEADER) else old
    atomic_write_text(path, CHANGELOG_HEADER + changes.markdown.rstrip() + "\n\n" + entries)

