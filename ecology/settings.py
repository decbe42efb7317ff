"""The settings of the ecology stage: light dataclasses, the one source of their defaults.

Kept apart from the modules that compute (pandas, scikit-learn, matplotlib), so
the command line can state defaults in `--help` without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from trapkit.errors import TrapkitError

FEATURE_GROUPINGS = ("folder", "day")
FEATURE_MAPS = ("auto", "pca", "umap")


@dataclass(frozen=True)
class FeatureSettings:
    """How `trapkit features` builds the morphological space (`trapkit.ecology.features`).

    `morphs`: k-means clusters (None: the K in 2..`max_morphs` with the best silhouette). `by`: diversity per
    folder (camera, site) or per day (EXIF time). `map`: the 2-D picture (auto: UMAP when umap-learn is installed,
    else PCA). `examples`: crops per morph in the montage.
    """

    morphs: int | None = None
    max_morphs: int = 10
    by: str = "folder"
    map: str = "auto"
    examples: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.morphs is not None and self.morphs < 1:
            raise TrapkitError(f"--morphs {self.morphs} must be at least 1")
        if self.max_morphs < 2:
            raise TrapkitError(f"--max-morphs {self.max_morphs} must be at least 2")
        if self.examples < 1:
            raise TrapkitError(f"--examples {self.examples} must be at least 1")
        if self.by not in FEATURE_GROUPINGS:
            raise TrapkitError(f"--by {self.by!r}: use one of {', '.join(FEATURE_GROUPINGS)}")
        if self.map not in FEATURE_MAPS:
            raise TrapkitError(f"--map {self.map!r}: use one of {', '.join(FEATURE_MAPS)}")


# Camtrap DP 1.0's values for project.samplingDesign and project.captureMethod.
SAMPLING_DESIGNS = ("simpleRandom", "systematicRandom", "clusteredRandom", "experimental", "targeted",
                    "opportunistic")
CAPTURE_METHODS = ("activityDetection", "timeLapse")


@dataclass(frozen=True)
class ReportSettings:
    """What `trapkit report` counts (`trapkit.ecology.report`).

    `independence`: minutes after a species' previous record at a deployment that make a new event (the usual
    30). `occasion`: days per occasion of the detection histories. `target_precision`: what the per-class
    thresholds must reach on the verified answers. `overlap`: two species (scientific or common names) whose
    activity overlap to compute. Camera health: `gap_days` without a photo, `busy_day` photos in one day,
    `min_night_photos` photos before a camera without night photos is flagged.
    """

    independence: float = 30.0
    occasion: int = 7
    target_precision: float = 0.95
    overlap: tuple[str, str] | None = None
    gap_days: float = 14.0
    busy_day: int = 200
    min_night_photos: int = 50

    def __post_init__(self):
        if not self.independence >= 0:
            raise TrapkitError(f"--independence {self.independence:g} must be 0 minutes or more")
        if self.occasion < 1:
            raise TrapkitError(f"--occasion {self.occasion} must be at least 1 day")
        if not 0.0 < self.target_precision <= 1.0:
            raise TrapkitError(f"--target-precision {self.target_precision:g} must be above 0 and at most 1")
        if self.overlap is not None and len(self.overlap) != 2:
            raise TrapkitError("--overlap takes two species")
        if not self.gap_days > 0 or self.busy_day < 1 or self.min_night_photos < 1:
            raise TrapkitError("--gap-days, --busy-day and --min-night-photos must be positive")
