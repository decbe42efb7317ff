"""Label requests, the model's guesses, applying answers to the manifest, and the labelling page's API.

Request (`RUN/requests/round-NNN.csv`): Timelapse's columns `File, RelativePath,
Selected`, one row per pool image that still has an unlabelled item;
`RelativePath` is the folder relative to the pool root with Windows
backslashes, `Selected` is `true` for the images the model asks about.

For Timelapse, each round also writes `round-NNN.choices.txt` (the classes, one per
line, and `[wrong box]`: paste it into a Choice field's list) and, in a run on
detections, `round-NNN.detections.json`: a MegaDetector file of the selected
detections only (with the model's guess as their classification), so Timelapse
draws the box each request row asks about.

Guesses (`RUN/requests/round-NNN.guesses.csv`): one row per selected item:
`File, RelativePath, Detection, X, Y, Width, Height, Guess, Confidence`
(`Detection` is the index into the image's MegaDetector detections and X..Height
its normalised box; both empty for a whole image). It is also the record of
which detections a round selected.

Answers: any CSV `trapkit.answers.read_answers` takes. A `Species` without a
`Detection` labels every selected detection of the image (every item of it,
when none was selected); with `Detection`, that detection alone; a
detection's own answer wins over its image's. `trapkit.answers.WRONG_BOX`
takes a detection out of training ("not an animal, or a wrong box").

Labelling page API (image paths are the run's names, with `/`: relative to the pool folder, or, for a
season outside it, under the season's prefix; `Run.pool_file` finds the file):
`current_request(run) -> list[RequestItem]` (one per selected item),
`class_names(run)`, `page_answers_path(run)`,
`save_answers(run, {path or (path, detection): species}) -> Path`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from trapkit.answers import (
    REQUEST_COLUMNS,
    TRUE_VALUES,
    WRONG_BOX,
    Answer,
    AnswersBook,
    clean_species,
    csv_text,
    join_key,
    neutralise,
    now,
    read_rows,
    restore,
    split_key,
    timelapse_folder,
)
from trapkit.atomic import atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.train.run import OK, POOL, Run, format_box, parse_box

log = logging.getLogger(__name__)

GUESS_COLUMNS = ("File", "RelativePath", "Detection", "X", "Y", "Width", "Height", "Guess", "Confidence")
MAX_LISTED = 10

# Which items of each image a round selected: image path -> detection indices (None in the set: the whole
# image), or None for "every item of the image" (a request without its guesses file).
Selection = Mapping[str, "set[int | None] | None"]


@dataclass(frozen=True)
class RequestItem:
    """One item the current request asks about: an image, or one detection in it."""

    relative_path: str  # folder of the run's name of the image, '/' separated ('' for the pool's root)
    file: str  # file name
    guess: str | None  # the model's top-1 class for this item, if known
    confidence: float | None  # its probability
    answered: str | None  # the answer saved for this round so far (the detection's, else its image's), if any
    detection: int | None = None  # index into the image's MegaDetector detections; None: the whole image
    bbox: tuple[float, float, float, float] | None = None  # the detection's normalised [x, y, w, h]

    @property
    def path(self) -> str:
        """The run's name of the image (relative to the pool folder, or under a season's prefix)."""
        return join_key(self.relative_path, self.file)

    @property
    def key(self) -> tuple[str, int | None]:
        """What `save_answers` takes for this item: (image path, detection index or None)."""
        return self.path, self.detection


@dataclass(frozen=True)
class Guess:
    """A selected item and the model's guess for it (a row of the guesses file)."""

    path: str
    detection: int | None
    bbox: tuple[float, float, float, float] | None
    guess: str | None
    confidence: float | None


@dataclass(frozen=True)
class Answered:
    """Answers and what the request they answer selected (a page file answers its own round's request)."""

    answers: list[Answer]
    requested: Selection | set[str]


@dataclass(frozen=True)
class Vocabulary:
    """What answers may name: the classes, other names of a class's own taxon (its Latin or common name), and
    the taxa above the classes (a rolled-up "canidae"), from the run's taxonomy and from the categories a
    classifier added above its classes in the seasons' detections files. Keys are casefolded."""

    classes: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)  # name -> the class it names
    taxa: Mapping[str, str] = field(default_factory=dict)  # name of a taxon above classes -> its name as recorded
    has_taxonomy: bool = False

    @classmethod
    def of(cls, classes, taxonomy=None, other_taxa=()) -> Vocabulary:
        """`taxonomy`: one string per class, or None. `other_taxa`: names a classifier gave taxa above its classes
        (a rollup or an allow-list's name for them)."""
        from trapkit.taxonomy import ANIMAL, UNKNOWN, parse_taxon

        classes = tuple(classes)
        names: dict[str, set[str]] = {}  # Latin or common name of a class's own taxon -> the classes it names
        taxa = {name.casefold(): name for name in (ANIMAL, UNKNOWN, *other_taxa)}
        for label, text in zip(classes, taxonomy or ()):
            taxon = parse_taxon(text)
            for name in (taxon.latin, taxon.common):
                if name and name.casefold() != label.casefold():
                    names.setdefault(name.casefold(), set()).add(label)
            for depth in range(1, taxon.depth):
                name = taxon.path[depth - 1]
                taxa.setdefault(name.casefold(), name)
        # A name two classes share (buck and fawn, both Odocoileus virginianus) is a taxon above them, not either.
        aliases = {name: next(iter(labels)) for name, labels in names.items() if len(labels) == 1}
        taxa |= {name: name for name, labels in names.items() if len(labels) > 1}
        taxa = {k: v for k, v in taxa.items() if k not in aliases and k not in {c.casefold() for c in classes}}
        return cls(classes, aliases, taxa, taxonomy is not None)


@dataclass
class IngestReport:
    new: int = 0
    already: int = 0
    corrected: int = 0
    unselected: int = 0  # labels on items that were not requested (kept)
    skipped_unreadable: int = 0
    wrong_boxes: int = 0  # items answered WRONG_BOX (left out of training)
    taxa: dict[str, int] = field(default_factory=dict)  # answers above the class level, kept aside: name -> items
    not_items: int = 0  # answers about detections that are not items of the run (below its threshold), left out
    new_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.new} new label(s)"]
        if self.already:
            parts.append(f"{self.already} already known")
        if self.corrected:
            parts.append(f"{self.corrected} corrected")
        if self.unselected:
            parts.append(f"{self.unselected} on items that were not requested (kept)")
        if self.wrong_boxes:
            parts.append(f"{self.wrong_boxes} marked {WRONG_BOX} (not trained on)")
        if self.taxa:
            named = ", ".join(f"{name} {k}" for name, k in sorted(self.taxa.items()))
            parts.append(f"{sum(self.taxa.values())} at a higher taxon, kept aside and not asked again ({named})")
        if self.not_items:
            parts.append(f"{self.not_items} about detections that are not items of the run (below its threshold or "
                         "outside its categories), left out")
        if self.skipped_unreadable:
            parts.append(f"{self.skipped_unreadable} on unreadable images (skipped)")
        if self.new_classes:
            parts.append(f"new classes: {', '.join(self.new_classes)}")
        return "; ".join(parts)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def _detection_cell(detection: int | None) -> str:
    return "" if detection is None else str(detection)


# -- requests and guesses ----------------------------------------------------------------------

def write_request(path: Path, pool_paths: list[str], selected: set[str]) -> None:
    """One row per image (in `pool_paths` order), `Selected` true for those in `selected`."""
    rows = []
    for p in pool_paths:
        folder, name = split_key(p)
        rows.append((name, timelapse_folder(folder), "true" if p in selected else "false"))
    atomic_write_text(path, csv_text(REQUEST_COLUMNS, rows))


def read_request(path: Path) -> tuple[list[str], set[str]]:
    """(every image path in the request, the selected ones)."""
    if not path.is_file():
        raise TrapkitError(f"no label request at {path}; run 'trapkit al next' to make one")
    header, rows = read_rows(path)
    idx = {h.lower(): i for i, h in enumerate(header)}
    if not {"file", "relativepath", "selected"} <= set(idx):
        raise TrapkitError(f"{path} is not a trapkit label request (columns: {', '.join(header)}); "
                           "run 'trapkit al next' to make one")
    paths, selected = [], set()
    for _, cells in rows:
        p = join_key(cells[idx["relativepath"]], cells[idx["file"]])
        paths.append(p)
        if cells[idx["selected"]].strip().lower() in TRUE_VALUES:
            selected.add(p)
    return paths, selected


def write_guesses(path: Path, guesses: list[Guess]) -> None:
    rows = []
    for g in guesses:
        folder, name = split_key(g.path)
        box = format_box(g.bbox).split() if g.bbox is not None else [""] * 4
        rows.append((name, timelapse_folder(folder), _detection_cell(g.detection), *box, neutralise(g.guess or ""),
                     "" if g.confidence is None else f"{g.confidence:.4f}"))
    atomic_write_text(path, csv_text(GUESS_COLUMNS, rows))


# MegaDetector's own ids for its categories; any other category name gets the next free id.
_MD_CATEGORY_IDS = {"animal": "1", "person": "2", "vehicle": "3"}


def write_choices(path: Path, classes) -> None:
    """The classes as a Timelapse Choice list: one per line, then `WRONG_BOX`."""
    atomic_write_text(path, "".join(f"{c}\n" for c in (*classes, WRONG_BOX)))


def write_round_detections(path: Path, guesses: list[Guess], detector: Mapping[tuple[str, int], tuple[str, str]],
                           classes) -> None:
    """A MegaDetector batch file of the selected detections (`detector`: (path, detection) -> (conf, category)),
    each with the model's guess as its classification: what Timelapse needs to draw the asked-about boxes."""
    from trapkit.atomic import atomic_write_json
    from trapkit.detections import OUTPUT_FORMAT_VERSION

    categories = dict(_MD_CATEGORY_IDS)
    ids = {c: str(i) for i, c in enumerate(classes)}
    images: dict[str, list[dict]] = {}
    for g in sorted(guesses, key=lambda g: (g.path, _order(g.detection))):
        if g.detection is None or g.bbox is None:
            continue
        conf, category = detector.get((g.path, g.detection), ("", ""))
        category = category or "animal"
        cid = categories.setdefault(category, str(max(int(k) for k in categories.values()) + 1))
        det = {"category": cid, "conf": float(conf) if conf else 1.0, "bbox": list(g.bbox)}
        if g.guess in ids:
            det["classifications"] = [[ids[g.guess], float(g.confidence or 0.0)]]
        images.setdefault(g.path, []).append(det)
    atomic_write_json(path, {
        "info": {"format_version": OUTPUT_FORMAT_VERSION, "detector": "the run's detections files",
                 "classifier": "trapkit (the round's guesses)"},
        "detection_categories": {v: k for k, v in categories.items()},
        "classification_categories": {i: c for c, i in ids.items()},
        "images": [{"file": p, "detections": d} for p, d in images.items()],
    }, indent=1)


def read_guesses(path: Path) -> list[Guess]:
    header, rows = read_rows(path)
    idx = {h.lower(): i for i, h in enumerate(header)}
    if not {c.lower() for c in GUESS_COLUMNS} <= set(idx):
        raise TrapkitError(f"{path} is not a trapkit guesses file (columns: {', '.join(header)}); delete it and "
                           "run 'trapkit al next' again")
    out = []
    for line, cells in rows:
        def cell(name: str) -> str:
            return cells[idx[name]].strip() if idx[name] < len(cells) else ""

        try:
            box = parse_box(" ".join(cell(k) for k in ("x", "y", "width", "height")))
            out.append(Guess(join_key(cell("relativepath"), cell("file")),
                             int(cell("detection")) if cell("detection") else None, box,
                             restore(cell("guess")) or None, float(cell("confidence")) if cell("confidence") else None))
        except ValueError:
            raise TrapkitError(f"{path} line {line} is damaged; delete the file and run 'trapkit al next' "
                               "again") from None
    return out


def selected_items(run: Run, n: int, df=None) -> list[Guess]:
    """The items request n selected, from its guesses file; without one, every unlabelled item of its
    selected images (from the manifest `df`)."""
    if run.guesses_path(n).is_file():
        return read_guesses(run.guesses_path(n))
    if not run.request_path(n).is_file():
        return []
    _, images = read_request(run.request_path(n))
    df = run.load_manifest() if df is None else df
    rows = df[(df["split"] == POOL) & (df["label"] == "") & df["path"].isin(images)]
    return [Guess(p, int(d) if d else None, parse_box(b), None, None)
            for p, d, b in zip(rows["path"], rows["detection"], rows["bbox"])]


def selection_of(items: list[Guess]) -> dict[str, set[int | None]]:
    out: dict[str, set[int | None]] = {}
    for g in items:
        out.setdefault(g.path, set()).add(g.detection)
    return out


# -- applying answers to the manifest ------------------------------------------------------

def ingest(df, answers: list[Answer] | list[Answered], classes: Vocabulary | tuple, requested: Selection | set[str] |
           None, round_n: int, allow_new_classes: bool = False, without_items: set[str] = frozenset()) -> IngestReport:
    """Apply answers to the manifest `df` in place (all or nothing); `classes` is not changed.

    `classes`: a `Vocabulary` (or the class names alone). `requested`: what the answered request selected
    (`Selection`, or a set of image paths: all their items); or give `answers` as `Answered` groups, each with
    its own. `without_items`: images in the pool's detections files with no qualifying detection, to say so.
    Errors name the rows: unknown images, images without items, unknown classes (unless allowed), one item
    given two different answers. Answers about detections that are not items (below the run's threshold, say
    from a review of a lower-threshold classify run) are left out and counted. An answer naming a taxon above
    the classes ("canidae") never becomes a class: it is kept aside in the row's `taxon` and counted.

    Which answer an item takes, most specific first: in a run on detections, the detection's own answer,
    then its image's; in a run on whole images, the image's answer, then its detections' (the review page
    answers per detection): a species beats WRONG_BOX there, since one wrong box does not empty the image.
    """
    def selection(given) -> Selection:
        return given if isinstance(given, Mapping) else {p: None for p in given}

    if answers and isinstance(answers[0], Answered):
        pairs = [(a, selection(group.requested)) for group in answers for a in group.answers]
    else:
        pairs = [(a, selection(requested or {})) for a in answers]
    pool = df.index[(df["split"] == POOL).to_numpy()]
    rows_of: dict[str, dict[int | None, int]] = {}
    for i, p, d in zip(pool, df.loc[pool, "path"], df.loc[pool, "detection"]):
        rows_of.setdefault(p, {})[int(d) if d else None] = i
    vocabulary = classes if isinstance(classes, Vocabulary) else Vocabulary.of(classes)
    classes = vocabulary.classes
    known = set(classes)
    # row -> (answer, how specific (higher wins), what its request asked, the taxon it names above the classes)
    chosen: dict[int, tuple[Answer, int, Selection, str | None]] = {}
    not_in_pool, no_items, not_items, unknown, conflicts = [], [], [], [], []
    new_classes: set[str] = set()
    for a, asked in pairs:
        rows = rows_of.get(a.path)
        if rows is None and a.detection is not None and a.path in without_items:
            not_items.append(f"{a.where}: {a.path} Detection {a.detection}")  # below the run's threshold
            continue
        if rows is None:
            (no_items if a.path in without_items else not_in_pool).append(f"{a.where}: {a.path}")
            continue
        whole = None in rows
        if a.detection is None:
            picked = asked.get(a.path)
            targets = [rows[d] for d in sorted(picked, key=_order) if d in rows] if picked else []
            targets = targets or list(rows.values())  # not selected: the answer is about every item of it
            rank = 3 if whole else 2
        elif whole:  # a detection's answer speaks for its image
            targets, rank = [rows[None]], 0 if a.species == WRONG_BOX else 1
        elif a.detection not in rows:
            not_items.append(f"{a.where}: {a.path} Detection {a.detection}")
            continue
        else:
            targets, rank = [rows[a.detection]], 3
        taxon = None
        if a.species not in known and a.species != WRONG_BOX:
            folded = a.species.casefold()
            if folded in vocabulary.aliases:  # the class's own Latin or common name
                a = replace(a, species=vocabulary.aliases[folded])
            elif folded in vocabulary.taxa:
                taxon = vocabulary.taxa[folded]
            elif not allow_new_classes:
                unknown.append(f"{a.where}: {a.species!r}")
                continue
            else:
                new_classes.add(a.species)
        for i in targets:
            previous = chosen.get(i)
            if previous is None or rank > previous[1]:
                chosen[i] = (a, rank, asked, taxon)
            elif rank == previous[1] and previous[0].species != a.species:
                conflicts.append(f"{a.where}: {a.species!r} vs {previous[0].where}: {previous[0].species!r}")
    if not_in_pool:
        raise TrapkitError(f"answers name images that are not in the pool ({_listed(not_in_pool)}); "
                           "answer the request CSV that trapkit wrote, keeping File and RelativePath as they are")
    if no_items:
        raise TrapkitError(f"answers name images with no detection at or above the run's threshold in its "
                           f"categories, so not in the pool ({_listed(no_items)}); leave them out")
    if unknown:
        taxa = "; answers above the class level need the run's taxonomy (al init --taxonomy, or export --taxonomy)" \
            if not vocabulary.has_taxonomy else ""
        raise TrapkitError(f"unknown class names ({_listed(unknown)}); known classes: {', '.join(classes)}. "
                           f"Fix the spelling, or pass --allow-new-classes to add them{taxa}")
    if conflicts:
        raise TrapkitError(f"one item has two different answers ({_listed(conflicts)}); keep one")

    report = IngestReport(new_classes=sorted(new_classes), warnings=case_clashes(sorted(new_classes), classes),
                          not_items=len(not_items))
    if not_items:
        log.info("answers about detections that are not items of the run, left out: %s", "; ".join(not_items))
    status, labels = df["status"].to_numpy(), df["label"].to_numpy()
    for i, (a, _, asked, taxon) in sorted(chosen.items()):
        if status[i] != OK:
            report.skipped_unreadable += 1
            continue
        if taxon is not None:
            report.taxa[taxon] = report.taxa.get(taxon, 0) + 1
            if not labels[i] and df.at[i, "taxon"] != taxon:  # a species label, once given, is more than a taxon
                df.at[i, "taxon"], df.at[i, "label_round"] = taxon, round_n
            continue
        if labels[i] == a.species:
            report.already += 1
            continue
        report.corrected += bool(labels[i])
        report.new += not labels[i]
        report.wrong_boxes += a.species == WRONG_BOX
        picked = asked.get(df.at[i, "path"], ())
        detection = df.at[i, "detection"]
        report.unselected += not (picked is None or (int(detection) if detection else None) in picked)
        df.at[i, "label"], df.at[i, "taxon"] = a.species, ""
        df.at[i, "label_round"] = round_n
    return report


def _order(detection: int | None) -> int:
    return -1 if detection is None else detection


def case_clashes(new: list[str], classes) -> list[str]:
    """Warnings for new class names that differ from another class only in case or spacing ("CATTLE", "cattle")."""
    def folded(name: str) -> str:
        return " ".join(name.replace("_", " ").split()).casefold()

    out, seen = [], {folded(c): c for c in classes}
    for name in new:
        other = seen.get(folded(name))
        if other is not None and other != name:
            out.append(f"new class {name!r} differs from {other!r} only in case or spacing; if they are one "
                       "species, correct the answers so both are spelled the same")
        seen.setdefault(folded(name), name)
    return out


# -- the labelling page's API ----------------------------------------------------------------

def page_answers_path(run_dir: str | Path) -> Path:
    run = Run(run_dir)
    return run.inbox_dir / f"round-{run.load_state().round:03d}-page.csv"


def class_names(run_dir: str | Path) -> list[str]:
    """Known class names in head index order (`WRONG_BOX` is never one; offer it beside them)."""
    return list(Run(run_dir).load_state().classes)


def _saved_answers(path: Path) -> dict[tuple[str, int | None], Answer]:
    return AnswersBook(path).answers() if path.is_file() else {}


def current_request(run_dir: str | Path) -> list[RequestItem]:
    """The items the current request selects (sorted by image, then detection), with the model's guess and
    any answer saved so far."""
    run = Run(run_dir)
    n = run.load_state().round
    answered = _saved_answers(page_answers_path(run_dir))
    items = []
    for g in sorted(selected_items(run, n), key=lambda g: (g.path, _order(g.detection))):
        folder, name = split_key(g.path)
        saved = answered.get((g.path, g.detection)) or answered.get((g.path, None))
        items.append(RequestItem(folder, name, g.guess, g.confidence, saved.species if saved else None,
                                 g.detection, g.bbox))
    return items


def _key(key) -> tuple[str, int | None]:
    """An answer key as given ('path', or (path, detection)) in the form items use."""
    path, detection = (key, None) if isinstance(key, str) else key
    if detection is not None and (isinstance(detection, bool) or not isinstance(detection, int)):
        raise TrapkitError(f"detection {detection!r} of {path!r} is not a detection index; reload the labelling page")
    return join_key(*split_key(str(path).replace("\\", "/"))), detection


def save_answers(run_dir: str | Path, answers: Mapping, allow_new_classes: bool = False) -> Path:
    """Merge `answers` into this round's page answers file, atomically, under the run's inbox lock.

    Keys: an image path (the answer is about the image: every selected detection of it) or
    (image path, detection index) for one detection; values: species, `WRONG_BOX`, or '' to withdraw
    an answer. Only items the current request selects are taken. The file is
    `RUN/inbox/round-NNN-page.csv` in the answer format that `trapkit al next` ingests. Returns its path.
    """
    run = Run(run_dir)
    with run.inbox_lock():
        n = run.load_state().round
        items = selected_items(run, n)
        keys = {(g.path, g.detection) for g in items}
        images = {g.path for g in items}
        answers = {_key(k): clean_species(str(s), "labelling page") if s is not None and str(s).strip() else ""
                   for k, s in answers.items()}
        bad = [f"{p}" + ("" if d is None else f" detection {d}") for p, d in answers
               if ((p, d) not in keys if d is not None else p not in images)]
        if bad:
            raise TrapkitError(f"not selected in the current request: {_listed(bad)}; the labelling page answers "
                               "only what the round asks about (give other labels to 'trapkit al next --labels "
                               "CSV'), or reload the page if a new round started")
        # A season's first guesses may be a classifier's taxa above the classes: confirming one is an answer.
        known = set(class_names(run_dir)) | {g.guess for g in items if g.guess}
        new = sorted({s for s in answers.values() if s and s not in known and s != WRONG_BOX})
        if new and not allow_new_classes:
            raise TrapkitError(f"unknown class names {new}; pick one of {', '.join(sorted(known))}, or "
                               f"{WRONG_BOX} for a box with no animal")
        for warning in case_clashes(new, known):
            log.warning("%s", warning)
        path = page_answers_path(run_dir)
        AnswersBook(path, "the labelling page's answers file").merge(answers, selected=True, reviewed=now())
    return path
