"""Taxonomy strings: what a class is, in the SpeciesNet / Wildlife Insights form.

Each class may carry one 7-token string, `id;class;order;family;genus;species;common name`,
with empty tokens for ranks it does not reach, e.g.

    3d80f1d6-b1df-4966-9ff4-94053c7a902a;mammalia;carnivora;canidae;canis;lupus;gray wolf
    ;mammalia;carnivora;canidae;;;canine family      (a family-level class, no id)
    f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank     (not a taxon: no class token)

Rules (those of SpeciesNet's taxonomy file and of MegaDetector's tools that read them):
exactly 7 tokens; lowercase (MegaDetector's smoothing refuses anything else, so text is
lowercased on reading); ranks filled from the top with no gap (a species needs its genus,
family, order and class); a string without a class token is not a taxon and needs a common
name. A subspecies is a species token with a space ("lupus familiaris").

Used by export (`trapkit export --taxonomy`), training (`al init --taxonomy`) and serving
(rollup, allow-lists, smoothing); stored in `ModelSpec.taxonomy`.
The CSV that supplies them has columns `label,taxonomy`, one row per class.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from trapkit.errors import TrapkitError

N_TOKENS = 7
# What a classifier answers above every taxon: "some animal", "cannot tell" (serve/postprocess's rollup). A
# person who confirms one has named no class.
ANIMAL, UNKNOWN = "animal", "unknown"
RANKS = ("class", "order", "family", "genus", "species")
FORMAT = "id;class;order;family;genus;species;common name"
CSV_COLUMNS = ("label", "taxonomy")
_SHOWN = 5  # rows named in one error line


@dataclass(frozen=True)
class Taxon:
    """One parsed taxonomy string. `path`: the five rank tokens (class .. species), '' where empty."""

    id: str
    path: tuple[str, str, str, str, str]
    common: str

    @property
    def string(self) -> str:
        return ";".join((self.id, *self.path, self.common))

    @property
    def depth(self) -> int:
        """Ranks filled: 0 for a non-taxon (blank, vehicle, animal), 1 class .. 5 species."""
        return sum(1 for t in self.path if t)

    @property
    def is_taxon(self) -> bool:
        return self.depth > 0

    @property
    def latin(self) -> str:
        """The scientific name: "canis lupus" for a species, else its lowest filled rank ("canidae")."""
        d = self.depth
        if d == 5:
            return f"{self.path[3]} {self.path[4]}"
        return self.path[d - 1] if d else ""

    @property
    def name(self) -> str:
        """What to show a person: the common name, else the scientific name."""
        return self.common or self.latin

    def prefix(self, depth: int) -> tuple[str, ...]:
        """The path cut to `depth` ranks, lower ranks empty: the ancestor at that rank."""
        return self.path[:depth] + ("",) * (len(RANKS) - depth)


def ancestor(path: tuple[str, ...], depth: int) -> Taxon:
    """The taxon at `depth` ranks above (or at) `path`, as a description of its own: no id, lower
    ranks empty, its scientific name as the common name (`;mammalia;carnivora;canidae;;;canidae`)."""
    cut = tuple(path[:depth]) + ("",) * (len(RANKS) - depth)
    taxon = Taxon("", cut, "")
    return Taxon("", cut, taxon.latin)


def parse_taxon(text: str) -> Taxon:
    """A `Taxon` from one 7-token string (lowercased, tokens stripped). `ValueError` says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"is {type(text).__name__}, not text")
    if "|" in text:
        raise ValueError("holds '|' (one taxonomy string per class)")
    tokens = [t.strip().lower() for t in text.split(";")]
    if len(tokens) != N_TOKENS:
        raise ValueError(f"has {len(tokens)} tokens, not {N_TOKENS} ({FORMAT})")
    path = tuple(tokens[1:6])
    depth = next((i for i, t in enumerate(path) if not t), len(path))
    if any(path[depth:]):
        gap = RANKS[depth]
        below = RANKS[next(i for i in range(depth, len(path)) if path[i])]
        raise ValueError(f"has a {below} but no {gap} (ranks are filled from the class down)")
    if depth == 0 and not tokens[6]:
        raise ValueError("has neither a class nor a common name")
    return Taxon(tokens[0], path, tokens[6])


def normalise(text: str) -> str:
    """The canonical form of one string (lowercase, tokens stripped); `ValueError` when invalid."""
    return parse_taxon(text).string


def check_taxonomy(taxonomy, labels) -> tuple[str, ...]:
    """Validated, normalised strings, one per label; a one-line `TrapkitError` naming the bad ones."""
    taxonomy = tuple(taxonomy)
    if len(taxonomy) != len(labels):
        raise TrapkitError(
            f"model spec has {len(taxonomy)} taxonomy strings for {len(labels)} labels; give one per class"
        )
    out, bad = [], []
    for label, text in zip(labels, taxonomy):
        try:
            out.append(normalise(text))
        except ValueError as e:
            bad.append(f"{label!r} {e}")
    if bad:
        raise TrapkitError(f"taxonomy strings are invalid: {few(bad)}; use {FORMAT}, e.g. "
                           "';mammalia;carnivora;canidae;canis;lupus;gray wolf'")
    return tuple(out)


def read_taxonomy_csv(path: str | Path, labels, other_labels_ok: bool = False) -> tuple[str, ...]:
    """The taxonomy strings for `labels` (in label order) from a `label,taxonomy` CSV.

    Every label needs exactly one row and every row a known label (unless `other_labels_ok`);
    the first kind of problem found is one `TrapkitError` line naming the rows (1-based, the
    header is row 1).
    """
    strings, missing = _read_taxonomy(path, labels, other_labels_ok)
    if missing:
        raise TrapkitError(f"{path} has no row for {few(missing)}; add one row per class")
    return strings


def read_taxonomy_partly(path: str | Path, labels) -> tuple[tuple[str, ...], list[str]]:
    """(strings, labels without a row) from a CSV that may lack rows for some labels (a run's, after a class was
    added) and hold rows for others; a label without a row gets `no_taxon(label)`."""
    return _read_taxonomy(path, labels, True)


def _read_taxonomy(path: str | Path, labels, other_labels_ok: bool) -> tuple[tuple[str, ...], list[str]]:
    path = Path(path)
    rows = csv_rows(path, "taxonomy", CSV_COLUMNS)
    labels = list(labels)
    known = set(labels)
    by_label: dict[str, str] = {}
    problems: dict[str, list[str]] = {"bad": [], "unknown": [], "duplicate": []}
    for n, row in rows:
        label, text = (row.get("label") or "").strip(), row.get("taxonomy") or ""
        if not label and not text.strip():
            continue  # a blank line
        if label not in known and not (other_labels_ok and label):
            problems["unknown"].append(f"row {n} ({label or 'no label'})")
            continue
        if label in by_label:
            problems["duplicate"].append(f"row {n} ({label})")
            continue
        try:
            by_label[label] = normalise(text)
        except ValueError as e:
            problems["bad"].append(f"row {n} ({label}) {e}")
    if problems["bad"]:
        raise TrapkitError(f"{path}: {few(problems['bad'])}; write each as {FORMAT}")
    if problems["unknown"]:
        raise TrapkitError(f"{path}: {few(problems['unknown'])} name no class of the model; its classes are "
                           f"{few(labels)} (names must match exactly)")
    if problems["duplicate"]:
        raise TrapkitError(f"{path}: {few(problems['duplicate'])} repeat a label; keep one row per class")
    missing = [label for label in labels if label not in by_label]
    return tuple(by_label.get(label) or no_taxon(label) for label in labels), missing


def no_taxon(label: str) -> str:
    """The string of a class with no taxonomy row: not a taxon, its label as its name (no rollup above it)."""
    return normalise(";;;;;;" + " ".join(label.replace(";", " ").split()))


def display_names(labels, taxonomy) -> list[str]:
    """What to show per class: its common name where the taxonomy gives one, else the label."""
    if not taxonomy:
        return list(labels)
    return [parse_taxon(t).common or label for label, t in zip(labels, taxonomy)]


def csv_rows(path: Path, what: str, columns: tuple[str, ...], need_all: bool = True) -> list[tuple[int, dict]]:
    """(line number, row) of a small UTF-8 CSV whose header (any case) has `columns` (all, or at least one)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise TrapkitError(f"{what} file {path} does not exist; check the path") from None
    except OSError as e:
        raise TrapkitError(f"cannot read {what} file {path} ({e.strerror or e}); check the path") from None
    except UnicodeDecodeError:
        raise TrapkitError(f"{what} file {path} is not UTF-8 text; save it as CSV UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or ()]
    have = [c for c in columns if c in fields]
    if (need_all and len(have) != len(columns)) or not have:
        wanted = ",".join(columns) if need_all else " and/or ".join(columns)
        raise TrapkitError(f"{what} file {path} needs the column{'s' if need_all else ''} {wanted} in its header "
                           f"(found {','.join(fields) or 'none'})")
    reader.fieldnames = fields
    return [(n, row) for n, row in enumerate(reader, 2)]


def few(items: list[str]) -> str:
    """The first few of `items` for an error line, and how many more."""
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


# C0 and C1 control characters (newline and tab included): a class name holding one splits CSV rows,
# status lines and model-card tables.
_CONTROL = "".join(map(chr, [*range(0x20), *range(0x7f, 0xa0)]))


def check_class_name(name: str, where: str = "class name") -> str:
    """`name` stripped; a one-line `TrapkitError` for an empty name or one with control characters."""
    if not isinstance(name, str):
        raise TrapkitError(f"{where} {name!r} is not text")
    name = name.strip()
    if not name:
        raise TrapkitError(f"{where} is empty; every class needs a name")
    if any(c in _CONTROL for c in name):
        raise TrapkitError(f"{where} {name!r} holds control characters (a newline or tab, say); "
                           "give the class a plain name")
    return name
