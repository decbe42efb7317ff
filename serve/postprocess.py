"""After the model, before the JSON: allow-lists, per-class thresholds and taxonomic rollup.

Each works on one detection's FULL probability vector p (C,), not on the top-k
that is written out, in this order:

1. Allow-list (`--allow-list CSV`, a geofence for a country or site; MegaDetector's
   `restrict_to_taxa_list` semantics without walking down). A class stays when the list
   names it (its label, its common name, or its scientific name), when it is not a taxon
   (blank, vehicle) or when it is human. Any other class is removed and its probability
   goes to its nearest allowed ancestor: the lowest rank of its path that is, or is above,
   a taxon on the list (a fox under an allow-list naming only the gray wolf goes to
   `canidae`). With no allowed ancestor it goes to `animal` (to `unknown` when the model
   has no taxonomy). Names on the list the model does not know are logged and skipped;
   a list naming nothing the model knows is an error.
2. The bar: the top category's `--class-thresholds` value, else `--rollup`. No bar, or
   a top probability at or above it: the detection's classifications are the top-k.
3. Below the bar, with taxonomy: for each rank from species up to class, sum the
   probabilities under each taxon at that rank; the first (lowest) rank whose best sum
   reaches the bar gives the answer (SpeciesNet and AddaxAI roll up at 0.65). Then
   `animal`: every taxon's probability together. Nothing reaches the bar, or no
   taxonomy: `unknown`, with the top probability. The answer comes first in the
   detection's classifications, followed by the top k-1 others.

Categories: ids "0".."C-1" are the model's classes. A taxon that is not a class (a
rollup or allow-list target) becomes a category of its own, with the 7-token
description `;class;order;family;;;name` (lower ranks empty, no id; named by its
scientific name unless the allow-list gives a common name), as do `animal` (SpeciesNet's
string) and `unknown`. Ids are fixed by the model and the settings alone (so checkpoints
and resumed runs agree); `used_categories` drops the ones no detection ended up with.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trapkit.errors import TrapkitError
from trapkit.serve.settings import PostSettings
from trapkit.taxonomy import ANIMAL, RANKS, UNKNOWN, Taxon, ancestor, csv_rows, few, parse_taxon

log = logging.getLogger(__name__)

CONF_DECIMALS = 4
# SpeciesNet's own string for "an animal, no more precise", so tools that know it recognise it.
ANIMAL_TAXON = "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal"
UNKNOWN_TAXON = ";;;;;;unknown"
HUMAN_PATH = ("homo", "sapiens")  # genus, species: kept by every allow-list, as MegaDetector does
ALLOW_COLUMNS = ("latin", "common", "label")
THRESHOLD_COLUMNS = ("label", "threshold")


@dataclass(frozen=True)
class Category:
    """One output category: `name` for `classification_categories`, `description` (7 tokens) or None."""

    name: str
    description: str | None = None


@dataclass(frozen=True)
class AllowList:
    """Names read from an allow-list CSV: rows as (latin, common, label), lowercased but label."""

    rows: tuple[tuple[str, str, str], ...]
    source: str = "allow-list"


@dataclass
class Plan:
    """Everything `classify` needs, fixed before the first image.

    target (C,) int: the category each class's probability goes to (itself when kept).
    bars (N,) float: each category's bar, NaN for none.
    levels: one (N,) int array per rollup rank, species first then `animal`: each
    category's ancestor category at that rank, -1 where it has none.
    """

    categories: list[Category]
    target: np.ndarray
    bars: np.ndarray
    levels: list[np.ndarray] = field(default_factory=list)
    unknown: int = -1
    n_classes: int = 0

    @property
    def live(self) -> np.ndarray:
        """Categories a probability can land on, in id order."""
        return np.unique(self.target)

    def describe(self) -> dict:
        """What the outputs depend on, as plain JSON (for checkpoint fingerprints and metadata)."""
        return {"categories": [[c.name, c.description] for c in self.categories], "target": self.target.tolist(),
                "bars": [None if math.isnan(b) else float(b) for b in self.bars],
                "levels": [lv.tolist() for lv in self.levels], "unknown": self.unknown}


def plain_plan(labels, taxonomy=None) -> Plan:
    """No post-processing: every class is its own category, no bars."""
    cats = [Category(label, t) for label, t in zip(labels, taxonomy or [None] * len(labels))]
    return Plan(cats, np.arange(len(labels)), np.full(len(labels), np.nan), n_classes=len(labels))


def build_plan(labels, taxonomy, settings: PostSettings) -> Plan:
    """The plan for a model's `labels` (and optional taxonomy strings) under `settings`; reads the CSVs."""
    allow = read_allow_list(settings.allow_list) if settings.allow_list is not None else None
    thresholds = read_class_thresholds(settings.class_thresholds, labels) if settings.class_thresholds else {}
    return make_plan(labels, taxonomy, rollup=settings.rollup, allow=allow, thresholds=thresholds)


def make_plan(labels, taxonomy=None, rollup: float | None = None, allow: AllowList | None = None,
              thresholds: dict[str, float] | None = None) -> Plan:
    """The plan from values already read (see `build_plan`)."""
    labels = list(labels)
    table = _Table(labels, taxonomy)
    target = np.arange(len(labels))
    if allow is not None:
        target = _allow(table, allow)
    bars_wanted = rollup is not None or bool(thresholds)
    if bars_wanted and not table.taxa:
        log.warning("the model has no taxonomy: detections below their bar become %r (export it with --taxonomy "
                    "to roll up instead)", UNKNOWN)
    ancestors = _levels(table, np.unique(target)) if bars_wanted and table.taxa else []
    unknown = table.unknown() if bars_wanted else -1
    n = len(table.categories)  # final: nothing is added below
    levels = []
    for level in ancestors:
        arr = np.full(n, -1)
        arr[list(level)] = list(level.values())
        levels.append(arr)
    bars = np.full(n, np.nan if rollup is None else float(rollup))
    for label, bar in (thresholds or {}).items():
        bars[labels.index(label)] = bar
    return Plan(table.categories, target, bars, levels, unknown, len(labels))


def classify(probs: np.ndarray, plan: Plan, k: int) -> list[list]:
    """[[category id, conf], ...] for one detection's (C,) probabilities: the module docstring's rule."""
    node = np.bincount(plan.target, weights=probs.astype(np.float64), minlength=len(plan.categories))  # (N,)
    live = plan.live
    order = live[np.argsort(-node[live], kind="stable")]  # descending, ties by id
    top = int(order[0])
    bar = plan.bars[top]
    if math.isnan(bar) or node[top] >= bar:
        return [_entry(c, node[c]) for c in order[:k]]
    answer, conf = plan.unknown, node[top]
    for anc in plan.levels:
        has = anc >= 0
        sums = np.bincount(anc[has], weights=node[has], minlength=len(plan.categories))
        best = int(np.argmax(sums))  # ties: the lowest id
        if sums[best] >= bar:
            answer, conf = best, sums[best]
            break
    rest = [c for c in order if c != answer][:k - 1]
    return [_entry(answer, conf)] + [_entry(c, node[c]) for c in rest]


def used_categories(plan: Plan, used_ids) -> tuple[dict[str, str], dict[str, str] | None]:
    """(`classification_categories`, `classification_category_descriptions` or None).

    Every class the allow-list keeps, plus whatever else a detection ended up with.
    """
    keep = set(int(i) for i in used_ids) | {int(t) for t in plan.target}
    ids = [i for i in range(len(plan.categories)) if i in keep]
    names = {str(i): plan.categories[i].name for i in ids}
    if all(plan.categories[i].description is None for i in range(plan.n_classes)):
        return names, None
    return names, {str(i): plan.categories[i].description for i in ids}


def _entry(category: int, conf: float) -> list:
    return [str(int(category)), round(min(float(conf), 1.0), CONF_DECIMALS)]


class _Table:
    """The category list under construction: the model's classes first, then taxa added on demand."""

    def __init__(self, labels: list[str], taxonomy):
        self.categories = [Category(label, t) for label, t in zip(labels, taxonomy or [None] * len(labels))]
        self.taxa = [parse_taxon(t) for t in taxonomy] if taxonomy else []
        self.n_classes = len(labels)
        self.renames: dict[tuple, str] = {}  # path -> common name given by an allow-list row
        self.specials: dict[str, int] = {}
        self.by_path: dict[tuple, int] = {}
        paths = [t.path for t in self.taxa if t.is_taxon]
        for i, t in enumerate(self.taxa):
            if t.is_taxon and paths.count(t.path) == 1:  # two classes of one taxon (buck, fawn): neither is it
                self.by_path[t.path] = i

    def of_path(self, path: tuple, depth: int) -> int:
        """The category for the taxon at `depth` ranks of `path`, added when no class is exactly it."""
        cut = tuple(path[:depth]) + ("",) * (len(RANKS) - depth)
        if cut not in self.by_path:
            taxon = ancestor(cut, depth)
            name = self.renames.get(cut, taxon.latin)
            self.by_path[cut] = self._add(Category(name, Taxon("", cut, name).string))
        return self.by_path[cut]

    def special(self, name: str, description: str) -> int:
        """`animal` or `unknown`: the class of that name (or non-taxon of that common name), else a new category."""
        if name not in self.specials:
            found = [i for i, c in enumerate(self.categories[:self.n_classes])
                     if c.name.lower() == name or (self.taxa and not self.taxa[i].is_taxon and self.taxa[i].common == name)]
            self.specials[name] = found[0] if found else self._add(Category(name, description if self.taxa else None))
        return self.specials[name]

    def animal(self) -> int:
        return self.special(ANIMAL, ANIMAL_TAXON)

    def unknown(self) -> int:
        return self.special(UNKNOWN, UNKNOWN_TAXON)

    def _add(self, category: Category) -> int:
        self.categories.append(category)
        return len(self.categories) - 1


def _allow(table: _Table, allow: AllowList) -> np.ndarray:
    """(C,) target category per class under the allow-list (module docstring, step 1)."""
    labels = [c.name for c in table.categories]
    names: dict[str, set[tuple]] = {}  # scientific name -> paths of taxa in the model's tree
    commons: dict[str, int] = {}
    for i, t in enumerate(table.taxa):
        if t.common:
            commons.setdefault(t.common, i)
        for d in range(1, t.depth + 1):
            cut = t.prefix(d)
            names.setdefault(ancestor(cut, d).latin, set()).add(cut)
    allowed_paths: set[tuple] = set()
    allowed_labels: set[str] = set()
    unknown_rows: list[str] = []
    for latin, common, label in allow.rows:
        if label in labels:
            allowed_labels.add(label)
        elif latin in names:
            allowed_paths |= names[latin]
            for path in names[latin] if common else ():
                table.renames[path] = common  # MegaDetector's lists name the taxon as the user wants it shown
        elif common in commons and table.taxa[commons[common]].is_taxon:
            allowed_paths.add(table.taxa[commons[common]].path)
        elif common in commons:
            allowed_labels.add(labels[commons[common]])
        else:
            unknown_rows.append(label or latin or common)
    if not allowed_paths and not allowed_labels:
        hint = "" if table.taxa else " (the model has no taxonomy: name classes in a label column)"
        raise TrapkitError(f"{allow.source} names no class or taxon of the model ({few(unknown_rows)}){hint}; "
                           "check the list is meant for this model")
    if unknown_rows:
        log.warning("%d names on %s are not in the model's taxonomy and are skipped: %s", len(unknown_rows),
                    allow.source, few(unknown_rows))
    # Every rank on the way down to an allowed taxon is an allowed ancestor.
    ancestors = {p[:d] + ("",) * (len(RANKS) - d) for p in allowed_paths for d in range(1, len(RANKS) + 1)
                 if p[d - 1]}
    target = np.arange(len(labels))
    for i, label in enumerate(labels):
        t = table.taxa[i] if table.taxa else None
        if label in allowed_labels or (t is not None and (not t.is_taxon or t.path[3:] == HUMAN_PATH)):
            continue
        if t is None:
            target[i] = table.unknown()
            continue
        depth = next((d for d in range(t.depth, 0, -1) if t.prefix(d) in ancestors), 0)
        if depth == t.depth:
            continue  # the class itself is allowed, or is above an allowed taxon
        target[i] = table.of_path(t.path, depth) if depth else table.animal()
    return target


def _levels(table: _Table, live: np.ndarray) -> list[dict[int, int]]:
    """Per rank (species .. class, then `animal`): {category: its ancestor category at that rank}."""
    taxa = {}
    for c in (int(c) for c in live):
        description = table.categories[c].description
        t = parse_taxon(description) if description else None
        if t is not None and t.is_taxon:
            taxa[c] = t
    levels = [{c: table.of_path(t.path, depth) for c, t in taxa.items() if t.depth >= depth}
              for depth in range(len(RANKS), 0, -1)]
    if taxa:
        animal = table.animal()
        levels.append({c: animal for c in taxa})
    return levels


def read_allow_list(path: str | Path) -> AllowList:
    """An allow-list CSV with any of the columns latin, common, label (MegaDetector's taxa lists work)."""
    path = Path(path)
    rows = csv_rows(path, "allow-list", ALLOW_COLUMNS, need_all=False)
    out = []
    for _, row in rows:
        latin = " ".join((row.get("latin") or "").lower().split())
        common = " ".join((row.get("common") or "").lower().split())
        label = (row.get("label") or "").strip()
        if latin or common or label:
            out.append((latin, common, label))
    if not out:
        raise TrapkitError(f"allow-list {path} has no names; give one row per allowed taxon or class")
    return AllowList(tuple(out), str(path))


def read_class_thresholds(path: str | Path, labels) -> dict[str, float]:
    """{label: bar} from a `label,threshold` CSV; unknown labels and values outside [0, 1] are errors."""
    path = Path(path)
    labels = list(labels)
    out: dict[str, float] = {}
    unknown, bad, repeated = [], [], []
    for n, row in csv_rows(path, "class thresholds", THRESHOLD_COLUMNS, need_all=True):
        label, text = (row.get("label") or "").strip(), (row.get("threshold") or "").strip()
        if not label and not text:
            continue
        if label not in labels:
            unknown.append(f"row {n} ({label or 'no label'})")
            continue
        if label in out:
            repeated.append(f"row {n} ({label})")
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            bad.append(f"row {n} ({label}: {text or 'empty'})")
            continue
        out[label] = value
    if unknown:
        raise TrapkitError(f"class thresholds {path}: {few(unknown)} name no class of the model; its classes are "
                           f"{few(labels)}")
    if bad:
        raise TrapkitError(f"class thresholds {path}: {few(bad)} are not confidences in [0, 1]")
    if repeated:
        raise TrapkitError(f"class thresholds {path}: {few(repeated)} repeat a label; keep one row per class")
    if not out:
        raise TrapkitError(f"class thresholds {path} has no rows; give label,threshold rows")
    return out
