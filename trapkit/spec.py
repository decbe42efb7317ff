"""The model spec: everything that must travel with a model's weights.

One frozen dataclass (timm's `PretrainedCfg` habit): architecture, feature
size, input size, resize policy and interpolation, mean/std, the crop policy
the model was trained with (margin, detection threshold and categories),
class names in index order and optional taxonomy strings. It is written as
JSON beside every checkpoint, into the ONNX graph's metadata, into the Hub
`config.json` and Triton's `labels.txt`, so nobody retypes labels or
constants. `trapkit.prepare.Preprocessing.from_spec` turns it into the pixels
every stage feeds the model.

Format 2 added `interpolation` and the crop policy: fields that change pixels,
which format 1 readers would ignore, so they refuse format 2 instead.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from trapkit import __version__
from trapkit.atomic import atomic_write_text
from trapkit.crop_policy import CropPolicy
from trapkit.errors import TrapkitError
from trapkit.taxonomy import check_class_name, check_taxonomy
from trapkit.typed_json import checked, read_json, refuse_newer

SPEC_FORMAT_VERSION = 2
SPEC_FILENAME = "spec.json"
RESIZE_MODES = ("squash", "center_crop")
# What a file may ask for: past these a spec is damaged or hostile, not a model (an input_size of
# 100,000 asks export for tens of GB).
MAX_INPUT_SIZE = 2048
MAX_WIDTH = 65536  # feat_dim and each hidden layer
MAX_HIDDEN_LAYERS = 8
MAX_LABELS = 100_000


def _refuse_newer(format_version: int) -> None:
    refuse_newer(format_version, SPEC_FORMAT_VERSION, "model spec")


@dataclass(frozen=True)
class ModelSpec:
    """What a trained model is and how images must be prepared for it.

    `mean`/`std` apply to pixels scaled to [0, 1]. `feat_dim=None` means the
    backbone's pooled features are the embedding (no projection).
    `head_hidden=()` means the head is a single linear layer. `crop_margin`,
    `detection_threshold`, `detection_categories`: which MegaDetector
    detections the model was trained on and how they were cropped, the
    defaults of `classify`, the demo and calibration.
    """

    arch: str
    labels: tuple[str, ...]
    feat_dim: int | None = 256
    l2_normalize: bool = True
    head_hidden: tuple[int, ...] = (230, 100)
    input_size: int = 224
    resize_mode: str = "squash"
    interpolation: str = CropPolicy.interpolation
    crop_margin: float = CropPolicy.margin
    detection_threshold: float = CropPolicy.threshold
    detection_categories: tuple[str, ...] = CropPolicy.categories
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    taxonomy: tuple[str, ...] | None = None
    name: str = "trapkit-model"
    trapkit_version: str = __version__
    format_version: int = SPEC_FORMAT_VERSION
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        # Normalise lists from JSON into tuples so specs compare and hash.
        for name in ("labels", "head_hidden", "mean", "std", "detection_categories"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()
        if self.taxonomy is not None:
            # Lowercase and stripped: MegaDetector's tools read these strings too.
            object.__setattr__(self, "taxonomy", check_taxonomy(self.taxonomy, self.labels))

    def validate(self) -> None:
        _refuse_newer(self.format_version)
        if not self.labels:
            raise TrapkitError("model spec has no class labels; a model needs at least one class")
        for label in self.labels:
            if check_class_name(label, "model spec label") != label:
                raise TrapkitError(f"model spec label {label!r} has spaces around it; re-export the model")
        if len(set(self.labels)) != len(self.labels):
            dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise TrapkitError(f"model spec has duplicate class labels {dupes}; make every class name unique")
        if self.taxonomy is not None:
            check_taxonomy(self.taxonomy, self.labels)
        if self.resize_mode not in RESIZE_MODES:
            raise TrapkitError(f"unknown resize_mode {self.resize_mode!r}; use one of {', '.join(RESIZE_MODES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise TrapkitError("model spec mean and std need three values each, std > 0")
        if not 16 <= self.input_size <= MAX_INPUT_SIZE:
            raise TrapkitError(f"input_size {self.input_size} is out of range; use 16 to {MAX_INPUT_SIZE} pixels")
        widths = [self.feat_dim] if self.feat_dim is not None else []
        if any(not 1 <= w <= MAX_WIDTH for w in [*widths, *self.head_hidden]) or \
                len(self.head_hidden) > MAX_HIDDEN_LAYERS:
            raise TrapkitError(f"feat_dim {self.feat_dim} or head_hidden {list(self.head_hidden)} is out of range "
                               f"(1 to {MAX_WIDTH} each, at most {MAX_HIDDEN_LAYERS} hidden layers); re-export the model")
        if len(self.labels) > MAX_LABELS:
            raise TrapkitError(f"model spec has {len(self.labels)} labels, over the limit of {MAX_LABELS}")
        self.crop_policy  # noqa: B018 - validates margin, threshold, categories and interpolation

    @property
    def crop_policy(self) -> CropPolicy:
        """Which detections the model was trained on and how they were cut: the default of every stage."""
        return CropPolicy(self.crop_margin, self.detection_threshold, self.detection_categories, self.interpolation)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def replace(self, **changes) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        # A newer format first: its fields may mean things this trapkit cannot check.
        _refuse_newer(d.get("format_version", SPEC_FORMAT_VERSION))
        hints = typing.get_type_hints(cls)
        advice = "re-export the model"
        d = {k: checked(v, hints[k], f"model spec field {k}", advice) if k in hints else v for k, v in d.items()}
        d["format_version"] = SPEC_FORMAT_VERSION  # an older spec read here is a current one: new fields take defaults
        unknown = sorted(set(d) - set(hints))
        if unknown:
            # Written by a newer trapkit: keep the fields we know, carry the rest.
            d = {k: v for k, v in d.items() if k in hints} | {"extra": {**d.get("extra", {}), **{k: d[k] for k in unknown}}}
        try:
            return cls(**d)
        except TypeError as e:
            raise TrapkitError(f"model spec is incomplete or malformed ({e}); {advice}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # invalid, nested too deep, a number too long
            raise TrapkitError(f"model spec is not valid JSON ({e.__class__.__name__}: {str(e)[:80]}); "
                               "re-export the model") from None
        if not isinstance(d, dict):
            raise TrapkitError("model spec JSON must be an object; re-export the model")
        return cls.from_dict(d)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILENAME
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILENAME
        if not path.is_file():
            raise TrapkitError(f"no model spec at {path}; point at a run, export or model folder")
        d = read_json(path, "model spec", "re-export the model")
        if not isinstance(d, dict):
            raise TrapkitError("model spec JSON must be an object; re-export the model")
        return cls.from_dict(d)
