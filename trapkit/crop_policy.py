"""The crop policy: which MegaDetector detections are items and how each is cut, with its defaults and checks.

One small dataclass, the only home of these defaults and of their ranges. The model
spec records the policy a model was trained with (`ModelSpec.crop_policy`), `al` runs
take it from their settings, and `classify`, the demo, calibration and the review page
use the model's policy unless a flag overrides part of it (`trapkit.prepare.Preprocessing`).
How a box becomes pixels under this policy is `trapkit.crops`.

Light on purpose (no NumPy, no Pillow): the command line states these defaults in
`--help` without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from trapkit.errors import TrapkitError

INTERPOLATIONS = ("bilinear", "bicubic")  # resampling names; trapkit.images maps them to Pillow's filters
MAX_MARGIN = 2.0


@dataclass(frozen=True)
class CropPolicy:
    """`threshold`, `categories`: detections at or above that confidence in those MegaDetector categories
    (any case) are items. `margin`: context added on each side of a box, as a fraction of its longer side.
    `interpolation`: the resampling of crops (and of whole images)."""

    margin: float = 0.1
    threshold: float = 0.1
    categories: tuple[str, ...] = ("animal",)
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "categories", check_categories(self.categories))
        check_margin(self.margin)
        check_threshold(self.threshold)
        check_interpolation(self.interpolation)


# One check per field, each one line that says what to give. Settings whose fields may be None ("the
# model's own") call these for the values they do hold.

def check_margin(margin: float) -> float:
    if not isinstance(margin, (int, float)) or not 0.0 <= margin <= MAX_MARGIN:
        raise TrapkitError(f"crop margin {margin} is out of range; use a fraction between 0 and {MAX_MARGIN:g}")
    return float(margin)


def check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise TrapkitError(f"detection threshold {threshold} is out of range; use a detection confidence in [0, 1]")
    return float(threshold)


def check_categories(categories) -> tuple[str, ...]:
    categories = tuple(categories or ())
    if not categories or not all(isinstance(c, str) and c.strip() for c in categories):
        raise TrapkitError("give at least one MegaDetector category to classify, such as animal")
    return categories


def check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise TrapkitError(f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
    return interpolation
