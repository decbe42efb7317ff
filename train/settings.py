"""Run settings: small dataclasses, one resolution order, written per round.

Resolution is defaults < config file (JSON) < command-line flags. The
resolved settings are stored in `RUN/settings.json` at `al init` and copied
into `RUN/rounds/NNN/settings.json` for every round, so any round can be
explained later. Flags given to `al next` (strategy, batch, finetune cadence)
update the stored settings for that round and the ones after, once the round
has finished: a failed `al next` leaves `settings.json` as it was.

The dataclasses are the only source of defaults: the command line's flags
(`FLAGS`) default to None ("not given") and state the defaults in their help
from here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from trapkit.atomic import atomic_write_json
from trapkit.crop_policy import CropPolicy
from trapkit.errors import TrapkitError
from trapkit.typed_json import checked, read_json, read_versioned

SETTINGS_FORMAT_VERSION = 5  # 2: detections, crop policy, sequences, seasons; 3: seasons anywhere;
# 4: first_strategy, the semi-supervised head; 5: the head's warm start
LOSSES = ("softmax", "triplet")
FIRST_STRATEGIES = ("typiclust", "kcenter", "uniform")  # a run without a seed: round 1 needs no model
MININGS = ("batch-hard", "semi-hard")


@dataclass
class DataSettings:
    labelled: str = ""
    unlabelled: str = ""
    validation: str | None = None
    # Used only when no validation folder is given: a stratified share of the seed held out (whole images).
    validation_fraction: float = 0.2
    # MegaDetector files (paths relative to their own tree). With `detections`, every qualifying detection
    # of the pool is one item; without `seed_detections` (`validation_detections`) the seed (validation)
    # images are crops already made (the mewc-snip layout).
    detections: str | None = None
    seed_detections: str | None = None
    validation_detections: str | None = None
    threshold: float = CropPolicy.threshold  # detections at or above this confidence are items
    categories: tuple[str, ...] = CropPolicy.categories  # in these MegaDetector categories (any case)
    # Seasons added by `al next --add-pool DIR [--detections MD.json]`, one entry each in these four: the folder,
    # its MegaDetector file ('' for a whole-image run), the prefix its items' paths carry in the run, and the
    # manifest root its items are read from (`season_list` gives them as `Season`s).
    seasons: tuple[str, ...] = ()
    season_detections: tuple[str, ...] = ()
    season_prefixes: tuple[str, ...] = ()
    season_roots: tuple[str, ...] = ()

    def season_list(self) -> list[Season]:
        """The run's seasons. A season added by an earlier trapkit lies inside the pool folder: its prefix is
        its path there."""
        out = []
        for i, folder in enumerate(self.seasons):
            if i < len(self.season_prefixes):
                prefix, root = self.season_prefixes[i], self.season_roots[i]
            else:
                prefix, root = Path(folder).resolve().relative_to(Path(self.unlabelled).resolve()).as_posix(), \
                    "unlabelled"
            out.append(Season(Path(folder), self.season_detections[i] if i < len(self.season_detections) else "",
                              prefix, root))
        return out


@dataclass(frozen=True)
class Season:
    """A season of the pool: `folder`, its MegaDetector file `detections` ('' for whole images), the `prefix` its
    items' paths carry in the run, and the manifest `root` they are read from (the pool's, for a season inside
    the pool folder)."""

    folder: Path
    detections: str
    prefix: str
    root: str


@dataclass
class ModelSettings:
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "lite0-offline"
    feat_dim: int = 256
    input_size: int | None = None  # None: what the backbone's pretrained weights expect
    resize_mode: str = "squash"
    interpolation: str = CropPolicy.interpolation
    crop_margin: float = CropPolicy.margin  # context around a detection box, as a fraction of its longer side
    head_hidden: tuple[int, ...] = (230, 100)


@dataclass
class FinetuneSettings:
    loss: str = "softmax"
    mining: str = "semi-hard"  # triplet loss only
    margin: float = 0.2  # triplet margin on L2-normalised embeddings
    epochs: int = 3  # 0 keeps the pretrained backbone frozen
    batch_size: int = 32
    classes_per_batch: int = 8  # class-balanced P x K batches
    lr: float = 1e-4
    every: int = 500  # finetune again once this many new labels arrived since the last finetune


@dataclass
class HeadSettings:
    max_epochs: int = 200  # epoch cap once min_steps are done
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10  # epochs without held-out improvement before stopping
    # Optimiser steps always taken (full-batch while the set fits one batch): a seed of 80 images is one
    # batch, and ~10 steps left the first round's head at chance (issue 15).
    min_steps: int = 300
    # Labelled examples before 10% are held out for early stopping (500 held out); fewer: exactly min_steps.
    # Early stopping on 50-500 held-out labels was noise that also cost a tenth of the labels (Fashion-MNIST at
    # 96 px, 6 seeds, a 2,000-label budget: mean accuracy +0.3 points uniform, +0.4 margin with 5,000, not 500).
    holdout_min: int = 5000
    l2: float = 3e-3  # penalty on the squared weights (standardised inputs), added to the mean loss
    # Label spreading over the pool's k-NN graph gives the head weighted pseudo-labels (trapkit.train.semi);
    # together they weigh `semi_weight` x the number of labels.
    semi_supervised: bool = False
    semi_weight: float = 1.0
    # Start each round's head from the last round's (while the embedder is unchanged). Off: a fresh head every
    # round is more accurate, as each warm start trains the old head on further (Fashion-MNIST learning curves
    # at 96 px, 3 seeds: uniform's final +1.4 points, margin's mean over the budget +0.6; docs/model-quality.md).
    warm_start: bool = False
    # Steps of a (256 -> 230 -> 100) MLP are too small to gain from intra-op threads; extra threads
    # only add synchronisation, which costs 5-10x on a busy machine. Restored after training.
    threads: int = 1


@dataclass
class SelectSettings:
    strategy: str = "margin"
    # Round 1 of a run started without a seed (no label, no model): a batch that covers the pool.
    first_strategy: str = "typiclust"
    batch: int = 100
    seed: int = 0
    # At most one item per camera-trap sequence (same folder, EXIF times within `sequence_gap` seconds) in a
    # round, unless the pool runs out. None: on for runs on detections, off for whole images.
    per_sequence: bool | None = None
    sequence_gap: float = 60.0


@dataclass
class RunSettings:
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    format_version: int = SETTINGS_FORMAT_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunSettings:
        return _merge(cls(), d, "settings")

    @property
    def on_detections(self) -> bool:
        """Items are MegaDetector detections (not whole images)."""
        return self.data.detections is not None

    @property
    def crop_policy(self) -> CropPolicy:
        """Which detections are items and how they are cut: what the run's models record in their spec."""
        return CropPolicy(self.model.crop_margin, self.data.threshold, self.data.categories, self.model.interpolation)

    @property
    def sequence_aware(self) -> bool:
        """Whether selection asks about at most one item per sequence in a round."""
        return self.on_detections if self.select.per_sequence is None else self.select.per_sequence

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunSettings:
        path = Path(path)
        advice = "put back the settings.json 'trapkit al init' wrote, or start a new run"
        if not path.is_file():
            raise TrapkitError(f"no settings at {path}; is this a run folder made by 'trapkit al init'?")
        d = read_versioned(path, SETTINGS_FORMAT_VERSION, "run settings", advice)
        return cls.from_dict({k: v for k, v in d.items() if k != "format_version"} |
                             {"format_version": SETTINGS_FORMAT_VERSION})


# Flat flag name -> (section, field): the command line's flags are these, each `--flag-name`.
# A flag left at None means "not given"; its default is the dataclass field's (`default_of`).
FLAGS = {
    "labelled": ("data", "labelled"),
    "unlabelled": ("data", "unlabelled"),
    "validation": ("data", "validation"),
    "validation_fraction": ("data", "validation_fraction"),
    "detections": ("data", "detections"),
    "seed_detections": ("data", "seed_detections"),
    "validation_detections": ("data", "validation_detections"),
    "threshold": ("data", "threshold"),
    "categories": ("data", "categories"),
    "backbone": ("model", "backbone"),
    "weights": ("model", "weights"),
    "feat_dim": ("model", "feat_dim"),
    "input_size": ("model", "input_size"),
    "interpolation": ("model", "interpolation"),
    "crop_margin": ("model", "crop_margin"),
    "loss": ("finetune", "loss"),
    "mining": ("finetune", "mining"),
    "finetune_epochs": ("finetune", "epochs"),
    "finetune_every": ("finetune", "every"),
    "strategy": ("select", "strategy"),
    "first_strategy": ("select", "first_strategy"),
    "batch": ("select", "batch"),
    "seed": ("select", "seed"),
    "per_sequence": ("select", "per_sequence"),
    "sequence_gap": ("select", "sequence_gap"),
    "head_max_epochs": ("head", "max_epochs"),
    "semi_supervised": ("head", "semi_supervised"),
}
FILE_FLAGS = ("labelled", "unlabelled", "validation", "detections", "seed_detections", "validation_detections")


def default_of(flag: str):
    """The default of the setting behind `flag`, for help texts that state it without restating it."""
    section, key = FLAGS[flag]
    return getattr(getattr(RunSettings(), section), key)


def resolve(config: str | Path | None = None, flags: dict | None = None, base: RunSettings | None = None) -> RunSettings:
    """defaults (or `base`) < config file < flags; then validated."""
    from trapkit.train.backbones import WEIGHT_SOURCES

    settings = RunSettings.from_dict(base.to_dict()) if base is not None else RunSettings()  # `base` unchanged
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise TrapkitError(f"config file {path} does not exist; check the --config path")
        settings = _merge(settings, read_json(path, "config file", "fix the JSON"), str(path))
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in FLAGS:
            raise TrapkitError(f"unknown setting {name!r}")
        section, key = FLAGS[name]
        setattr(getattr(settings, section), key, value)
    # Folders, files and weight files are stored absolute, so later commands (and the labelling page) work
    # from any directory.
    for key in FILE_FLAGS:
        if getattr(settings.data, key):
            setattr(settings.data, key, str(Path(getattr(settings.data, key)).resolve()))
    if settings.model.weights not in WEIGHT_SOURCES:
        settings.model.weights = str(Path(settings.model.weights).resolve())
    validate(settings)
    return settings


def validate(s: RunSettings) -> None:
    from trapkit.flags import only_with
    from trapkit.train.strategies import STRATEGIES

    if s.finetune.loss not in LOSSES:
        raise TrapkitError(f"unknown loss {s.finetune.loss!r}; use one of {', '.join(LOSSES)}")
    if s.finetune.mining not in MININGS:
        raise TrapkitError(f"unknown triplet mining {s.finetune.mining!r}; use one of {', '.join(MININGS)}")
    if s.select.strategy not in STRATEGIES:
        raise TrapkitError(f"unknown strategy {s.select.strategy!r}; use one of {', '.join(STRATEGIES)}")
    if s.select.first_strategy not in FIRST_STRATEGIES:
        raise TrapkitError(f"--first-strategy {s.select.first_strategy!r} needs no model, so it must be one of "
                           f"{', '.join(FIRST_STRATEGIES)}")
    if s.select.batch < 1:
        raise TrapkitError(f"--batch must be at least 1, got {s.select.batch}")
    if s.select.seed < 0:
        raise TrapkitError(f"--seed must be 0 or more, got {s.select.seed}")
    if s.model.feat_dim < 2:
        raise TrapkitError(f"--feat-dim must be at least 2, got {s.model.feat_dim}")
    if not 0.0 <= s.data.validation_fraction < 1.0:
        raise TrapkitError("validation_fraction must be in [0, 1)")
    h = s.head
    for name, value, least in (("head.max_epochs", h.max_epochs, 1), ("head.min_steps", h.min_steps, 1),
                               ("head.batch_size", h.batch_size, 1), ("head.patience", h.patience, 1),
                               ("head.holdout_min", h.holdout_min, 10), ("head.threads", h.threads, 1)):
        if value < least:
            raise TrapkitError(f"{name} must be at least {least}, got {value}; fix the config file or flag")
    if not (h.lr > 0 and h.l2 >= 0 and h.weight_decay >= 0 and h.semi_weight >= 0):
        raise TrapkitError(f"head settings out of range (lr {h.lr} must be above 0, l2 {h.l2}, weight_decay "
                           f"{h.weight_decay} and semi_weight {h.semi_weight} at least 0); fix the config file")
    s.crop_policy  # noqa: B018 - validates threshold, categories, margin and interpolation
    if s.select.sequence_gap < 0:
        raise TrapkitError(f"--sequence-gap must be 0 or more seconds, got {s.select.sequence_gap}")
    only_with("--detections POOL_MD.json", s.data.detections is not None,
              {"--seed-detections": s.data.seed_detections is not None,
               "--validation-detections": s.data.validation_detections is not None})
    only_with("--validation DIR", s.data.validation is not None,
              {"--validation-detections": s.data.validation_detections is not None})


def _merge(obj, d: dict, where: str):
    """Copy of dataclass `obj` with values from nested dict `d`; unknown keys are an error."""
    if not isinstance(d, dict):
        raise TrapkitError(f"{where}: expected a JSON object")
    hints = typing.get_type_hints(type(obj))  # field name -> type
    changes = {}
    for key, value in d.items():
        if key not in hints:
            raise TrapkitError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(hints))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, f"{where}.{key}")
        else:
            changes[key] = checked(value, hints[key], f"{where}.{key}", "fix the value in the config file")
    return dataclasses.replace(obj, **changes)
