"""The serving contract: what an exported trapkit graph looks like from the outside.

Export writes it and every serving layer reads it, so it lives in the core and
neither stage imports the other for it:

- the file: `model.onnx` in an export folder, a Triton version folder and a Hub folder; an export
  folder also holds the reduced-precision graph it was asked for beside the fp32 `model.onnx`
  (`GRAPH_FILENAMES`: `model.int8.onnx`, `model.fp16.onnx`), which `trapkit classify --precision` runs;
- the tensors: input `images` (N, S, S, 3) uint8; outputs `probs` (N, C) and
  `embedding` (N, D) float32;
- the metadata: `trapkit.spec` (the `ModelSpec` JSON) and `trapkit.precision`
  in the graph's `metadata_props`, and the same spec JSON as the Triton model
  parameter `trapkit.spec`;
- the Hub folder: `model.onnx`, `config.json`, `README.md`.
"""

from __future__ import annotations

import re
from pathlib import Path

from trapkit.errors import TrapkitError
from trapkit.spec import ModelSpec

ONNX_FILENAME = "model.onnx"
# The graphs an export folder holds, by precision: model.onnx is always fp32.
GRAPH_FILENAMES = {"fp32": ONNX_FILENAME, "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
INPUT_NAME = "images"
PROBS, EMBEDDING = "probs", "embedding"
OUTPUT_NAMES = (PROBS, EMBEDDING)
SPEC_PROP = "trapkit.spec"
PRECISION_PROP = "trapkit.precision"
INT8_TARGET_PROP = "trapkit.int8_target"  # int8 graphs: avx2 | vnni | gpu, what their weights were made for
TRITON_SPEC_PARAMETER = "trapkit.spec"
CONFIG_FILENAME = "config.json"
CARD_FILENAME = "README.md"
HUB_FILES = (ONNX_FILENAME, CONFIG_FILENAME, CARD_FILENAME)  # the first two are required to load a model
# A Hub folder's changelog: `## title` entries, newest first; `trapkit publish` makes the newest its commit message.
CHANGELOG_FILENAME = "CHANGELOG.md"


def read_metadata(path: str | Path) -> dict[str, str]:
    """All `metadata_props` of an ONNX file: through `onnx` without loading weights, else onnxruntime."""
    path = Path(path)
    if not path.is_file():
        raise TrapkitError(f"ONNX model {path} does not exist; export one with 'trapkit export'")
    try:
        import onnx
    except ImportError:  # a serving install has onnxruntime only
        return _metadata_through_onnxruntime(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises many kinds on a damaged file
        raise TrapkitError(f"{path} is not a readable ONNX model ({e.__class__.__name__}); re-export it") from None
    return {p.key: p.value for p in proto.metadata_props}


def _metadata_through_onnxruntime(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise TrapkitError(f"{path} is not a readable ONNX model ({e.__class__.__name__}); re-export it") from None
    return dict(session.get_modelmeta().custom_metadata_map)


def read_spec(path: str | Path) -> ModelSpec:
    """The `ModelSpec` stored in an exported graph."""
    return spec_from_metadata(read_metadata(path), path)


def spec_from_metadata(meta: dict[str, str], path: str | Path) -> ModelSpec:
    """The spec in a graph's metadata props (from onnx or an onnxruntime session)."""
    if SPEC_PROP not in meta:
        raise TrapkitError(f"{path} has no '{SPEC_PROP}' metadata; export it with 'trapkit export'")
    return ModelSpec.from_json(meta[SPEC_PROP])


def latest_changelog_entry(folder: Path) -> tuple[str, str] | None:
    """(title, body) of the newest CHANGELOG.md entry of a Hub folder, None without one."""
    path = Path(folder) / CHANGELOG_FILENAME
    if not path.is_file():
        return None
    entries = re.split(r"(?m)^## ", path.read_text(encoding="utf-8"))[1:]  # [0]: the header, if any
    if not entries:
        return None
    title, _, rest = entries[0].partition("\n")
    return title.strip(), rest.strip()

