"""The settings of the batch classifier and the demo: light dataclasses, the one source of their defaults.

Kept apart from `trapkit.serve.classify` (NumPy, the decoders) and
`trapkit.serve.demo` (Gradio) so that the command line can state their
defaults in `--help` without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trapkit.crop_policy import check_categories, check_margin, check_threshold
from trapkit.errors import TrapkitError
from trapkit.serve.smoothing import SmoothSettings


@dataclass(frozen=True)
class PostSettings:
    """After the model (`trapkit.serve.postprocess`): `rollup` bar, allow-list and per-class thresholds CSVs.

    All None: each detection's classifications are the plain top-k.
    """

    rollup: float | None = None
    allow_list: Path | None = None
    class_thresholds: Path | None = None

    def __post_init__(self):
        if self.rollup is not None and not (isinstance(self.rollup, (int, float)) and 0.0 <= self.rollup <= 1.0):
            raise TrapkitError(f"--rollup {self.rollup} is out of range; give a confidence in [0, 1], e.g. 0.65")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.rollup, self.allow_list, self.class_thresholds))


@dataclass(frozen=True)
class ClassifySettings:
    """What to classify and how. `threshold`, `categories`, `margin`: None takes the model's own crop policy.

    Changing any of the first four invalidates a checkpoint.
    """

    threshold: float | None = None
    categories: tuple[str, ...] | None = None
    top_k: int = 5
    margin: float | None = None
    post: PostSettings = field(default_factory=PostSettings)  # rollup, allow-list, per-class thresholds
    smooth: SmoothSettings | None = None  # None: no smoothing
    sequence_gap: float = 60.0  # seconds: the most between photos of one sequence (smoothing, --sequences-out)
    frame_sample: int | None = None  # without detections: classify every N-th frame of each video (None: no videos)
    batch_size: int = 32
    workers: int = 2
    concurrency: int = 1
    checkpoint_every: int = 500

    def __post_init__(self):
        for name in ("top_k", "batch_size", "workers", "concurrency", "checkpoint_every", "frame_sample"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TrapkitError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.sequence_gap >= 0:
            raise TrapkitError(f"--sequence-gap {self.sequence_gap:g} must be 0 seconds or more")
        _check_policy_overrides(self)

    def preprocessing(self, spec):
        """The model's `trapkit.prepare.Preprocessing` and crop policy, with these settings on top."""
        from trapkit.prepare import Preprocessing

        return Preprocessing.from_spec(spec, threshold=self.threshold, categories=self.categories, margin=self.margin)


def _check_policy_overrides(settings) -> None:
    """The crop-policy fields a settings object overrides (None: the model's own), checked by the policy's rules."""
    for value, check in ((settings.threshold, check_threshold), (settings.margin, check_margin),
                         (settings.categories, check_categories)):
        if value is not None:
            check(value)


@dataclass(frozen=True)
class Parallelism:
    """Decoding threads, batches in flight, and onnxruntime threads per batch."""

    workers: int
    concurrency: int
    threads: int

    @classmethod
    def for_cpus(cls, cpus: int, workers: int | None = None, concurrency: int | None = None,
                 threads: int | None = None) -> Parallelism:
        """Defaults for `cpus` cores, any given value kept.

        A few batches in flight with fewer threads each beat one batch on every
        core: onnxruntime's threads then never wait on each other (single-thread
        Lite0 costs ~20% less CPU per crop than two threads on one batch), and the
        decoding threads fill the gaps (bench/bench_classify.py).
        """
        if any(v is not None and v < 0 for v in (workers, concurrency, threads)):
            raise TrapkitError("--workers, --concurrency and --threads must be positive")
        concurrency = concurrency or min(cpus, 4)
        return cls(workers or cpus, concurrency, threads or max(1, cpus // concurrency))


@dataclass(frozen=True)
class DemoSettings:
    """`threshold`, `categories`, `margin`: which detections are classified and how, as in `trapkit classify`
    (None: the model's own crop policy). `max_batch_size`: requests Gradio groups into one call.
    `display_size`: longest side of the shown photos."""

    top_k: int = 5
    threshold: float | None = None
    categories: tuple[str, ...] | None = None
    margin: float | None = None
    max_batch_size: int = 8
    display_size: int = 1024

    def __post_init__(self):
        if self.top_k < 1:
            raise TrapkitError(f"--top-k {self.top_k} must be at least 1")
        _check_policy_overrides(self)
        if self.max_batch_size < 1:
            raise TrapkitError(f"--max-batch {self.max_batch_size} must be at least 1")

    def preprocessing(self, spec):
        """The model's `trapkit.prepare.Preprocessing` and crop policy, with these settings on top."""
        from trapkit.prepare import Preprocessing

        return Preprocessing.from_spec(spec, threshold=self.threshold, categories=self.categories, margin=self.margin)
