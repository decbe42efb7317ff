"""Timelapse-compatible label requests and answers, and the labelling page's API.

Request (`RUN/requests/round-NNN.csv`): columns `File, RelativePath, Selected`
over every unlabelled readable pool image; `RelativePath` is the folder
relative to the pool root with Windows backslashes (Timelapse's convention),
`Selected` is `true` for the images the model asks about.

Answer: any CSV with `File` and `Species` (and usually `RelativePath`,
`Selected`): Timelapse exports, Excel saves (UTF-8 BOM or cp1252, `;`
delimiters, CRLF), backslashes or slashes, extra columns, any column order.
An empty `Species` means "not answered yet".

Labelling page API (keys are image paths relative to `image_root(run)`,
with `/`):
`current_request(run) -> list[RequestItem]`, `class_names(run)`,
`image_root(run)`, `save_answers(run, {path: species}) -> Path`.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from trapkit.atomic import atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.train.run import Run

log = logging.getLogger(__name__)

REQUEST_COLUMNS = ("File", "RelativePath", "Selected")
ANSWER_COLUMNS = ("File", "RelativePath", "Selected", "Species")
TRUE_VALUES = frozenset({"true", "1", "yes", "y", "x", "selected"})
MAX_LISTED = 10


@dataclass(frozen=True)
class RequestItem:
    relative_path: str  # folder relative to image_root, '/' separated ('' for the root)
    file: str  # file name
    guess: str | None  # the model's top-1 class for this image, if known
    confidence: float | None  # its probability
    answered: str | None  # the answer saved for this round so far, if any

    @property
    def path(self) -> str:
        """The image path relative to image_root: the key `save_answers` takes."""
        return join_key(self.relative_path, self.file)


@dataclass(frozen=True)
class Answer:
    where: str  # "file.csv line 7", for error messages
    path: str  # image path relative to the pool root, '/' separated
    species: str
    selected: bool | None


@dataclass
class IngestReport:
    new: int = 0
    already: int = 0
    corrected: int = 0
    unselected: int = 0  # labels on rows that were not requested (kept)
    skipped_unreadable: int = 0
    new_classes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.new} new label(s)"]
        if self.already:
            parts.append(f"{self.already} already known")
        if self.corrected:
            parts.append(f"{self.corrected} corrected")
        if self.unselected:
            parts.append(f"{self.unselected} on images that were not requested (kept)")
        if self.skipped_unreadable:
            parts.append(f"{self.skipped_unreadable} on unreadable images (skipped)")
        if self.new_classes:
            parts.append(f"new classes: {', '.join(self.new_classes)}")
        return "; ".join(parts)


def join_key(relative_path: str, file: str) -> str:
    folder = relative_path.replace("\\", "/").strip().strip("/")
    if folder in ("", "."):
        return file.strip()
    return f"{folder.removeprefix('./')}/{file.strip()}"


def split_key(path: str) -> tuple[str, str]:
    folder, _, name = path.rpartition("/")
    return folder, name


# -- reading and writing CSVs -----------------------------------------------------------

def _decode(data: bytes, source: str) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode Text"
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise TrapkitError(f"{source} is damaged UTF-16 text; save it as CSV UTF-8") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise TrapkitError(f"{source} is neither UTF-8 nor Windows-1252 text; save it as CSV UTF-8")


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header names, [(line number, cells)]) of a CSV in any of the dialects Excel and Timelapse write."""
    if not path.is_file():
        raise TrapkitError(f"answers file {path} does not exist; check the --labels path")
    text = _decode(path.read_bytes(), str(path))
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except StopIteration:
        raise TrapkitError(f"{path} is empty; export the labels from Timelapse as CSV") from None
    except csv.Error as e:  # e.g. a quote that is never closed swallows the rest of the file
        raise TrapkitError(f"{path} line {reader.line_num} is not valid CSV ({e}); check its quotes, or save it "
                           "again from Timelapse or Excel") from None
    return [h.strip() for h in header], rows


def read_answers(path: str | Path) -> list[Answer]:
    """Parse an answers CSV; rows with an empty Species are left out (not answered yet)."""
    path = Path(path)
    header, rows = _read_rows(path)
    index = {h.lower(): i for i, h in enumerate(header)}
    for required in ("file", "species"):
        if required not in index:
            raise TrapkitError(
                f"{path} has no '{required.title()}' column (columns: {', '.join(header)}); "
                "answer the request CSV by adding a Species column"
            )

    def cell(cells: list[str], name: str) -> str:
        i = index.get(name)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    answers = []
    for line, cells in rows:
        species = cell(cells, "species")
        if not species:
            continue
        selected = cell(cells, "selected").lower() in TRUE_VALUES if "selected" in index else None
        answers.append(Answer(f"{path.name} line {line}", join_key(cell(cells, "relativepath"), cell(cells, "file")),
                              species, selected))
    return answers


def _csv_text(header: tuple[str, ...], rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # Excel and Timelapse both expect CRLF
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_request(path: Path, pool_paths: list[str], selected: set[str]) -> None:
    rows = []
    for p in pool_paths:
        folder, name = split_key(p)
        rows.append((name, folder.replace("/", "\\"), "true" if p in selected else "false"))
    atomic_write_text(path, _csv_text(REQUEST_COLUMNS, rows))


def write_guesses(path: Path, guesses: list[tuple[str, str, float]]) -> None:
    """(image path, top-1 class, probability) for the selected images."""
    atomic_write_text(path, _csv_text(("Path", "Guess", "Confidence"), [(p, g, f"{c:.4f}") for p, g, c in guesses]))


def read_request(path: Path) -> tuple[list[str], set[str]]:
    """(all pool paths in the request, the selected ones)."""
    if not path.is_file():
        raise TrapkitError(f"no label request at {path}; run 'trapkit al next' to make one")
    header, rows = _read_rows(path)
    idx = {h.lower(): i for i, h in enumerate(header)}
    paths, selected = [], set()
    for _, cells in rows:
        p = join_key(cells[idx["relativepath"]], cells[idx["file"]])
        paths.append(p)
        if cells[idx["selected"]].strip().lower() in TRUE_VALUES:
            selected.add(p)
    return paths, selected


# -- applying answers to the manifest ------------------------------------------------------

def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def ingest(df, answers: list[Answer], classes: list[str], requested: set[str], round_n: int,
           allow_new_classes: bool = False) -> IngestReport:
    """Apply answers to the manifest `df` in place (all or nothing). `classes` grows in place when allowed.

    Errors name the rows: unknown images, unknown classes (unless allowed),
    and one image given two different answers.
    """
    pool = df.index[df["split"] == "pool"]
    row_of = dict(zip(df.loc[pool, "path"], pool))
    known = set(classes)
    chosen: dict[str, Answer] = {}
    not_in_pool, unknown, conflicts = [], [], []
    for a in answers:
        if a.path not in row_of:
            not_in_pool.append(f"{a.where}: {a.path}")
        elif a.species not in known and not allow_new_classes:
            unknown.append(f"{a.where}: {a.species!r}")
        elif a.path in chosen and chosen[a.path].species != a.species:
            conflicts.append(f"{a.where}: {a.species!r} vs {chosen[a.path].where}: {chosen[a.path].species!r}")
        else:
            chosen[a.path] = a
    if not_in_pool:
        raise TrapkitError(f"answers name images that are not in the pool ({_listed(not_in_pool)}); "
                           "answer the request CSV that trapkit wrote, keeping File and RelativePath as they are")
    if unknown:
        raise TrapkitError(f"unknown class names ({_listed(unknown)}); known classes: {', '.join(classes)}. "
                           "Fix the spelling, or pass --allow-new-classes to add them")
    if conflicts:
        raise TrapkitError(f"one image has two different answers ({_listed(conflicts)}); keep one")

    report = IngestReport()
    for path, a in chosen.items():
        i = row_of[path]
        if df.at[i, "status"] != "ok":
            report.skipped_unreadable += 1
            continue
        if a.species not in known:
            classes.append(a.species)
            known.add(a.species)
            report.new_classes.append(a.species)
        old = df.at[i, "label"]
        if old == a.species:
            report.already += 1
            continue
        report.corrected += bool(old)
        report.new += not old
        report.unselected += path not in requested
        df.at[i, "label"] = a.species
        df.at[i, "label_round"] = round_n
    return report


# -- the labelling page's API ----------------------------------------------------------------

def page_answers_path(run_dir: str | Path) -> Path:
    run = Run(run_dir)
    return run.inbox_dir / f"round-{run.load_state().round:03d}-page.csv"


def image_root(run_dir: str | Path) -> Path:
    """The unlabelled pool root: request paths are relative to it."""
    return Path(Run(run_dir).settings().data.unlabelled)


def class_names(run_dir: str | Path) -> list[str]:
    """Known class names in head index order."""
    return list(Run(run_dir).load_state().classes)


def _saved_answers(path: Path) -> dict[str, str]:
    return {a.path: a.species for a in read_answers(path)} if path.is_file() else {}


def current_request(run_dir: str | Path) -> list[RequestItem]:
    """The images the current request selects, with the model's guess and any answer saved so far."""
    run = Run(run_dir)
    n = run.load_state().round
    _, selected = read_request(run.request_path(n))
    guesses = {}
    if run.guesses_path(n).is_file():
        _, rows = _read_rows(run.guesses_path(n))
        guesses = {cells[0]: (cells[1], float(cells[2])) for _, cells in rows}
    answered = _saved_answers(page_answers_path(run_dir))
    items = []
    for p in sorted(selected):
        folder, name = split_key(p)
        guess, conf = guesses.get(p, (None, None))
        items.append(RequestItem(folder, name, guess, conf, answered.get(p)))
    return items


def save_answers(run_dir: str | Path, answers: dict[str, str], allow_new_classes: bool = False) -> Path:
    """Merge `answers` ({image path: species}; '' removes one) into this round's page answers file, atomically.

    The file is `RUN/inbox/round-NNN-page.csv` in the answer format that
    `trapkit al next` ingests. Returns its path.
    """
    run = Run(run_dir)
    n = run.load_state().round
    pool, selected = read_request(run.request_path(n))
    pool_set = set(pool)
    known = set(class_names(run_dir))
    answers = {join_key(*split_key(p.replace("\\", "/"))): s for p, s in answers.items()}
    bad = [p for p in answers if p not in pool_set]
    if bad:
        raise TrapkitError(f"not images of the current request: {_listed(bad)}; reload the labelling page")
    unknown = sorted({s.strip() for s in answers.values() if s.strip() and s.strip() not in known})
    if unknown and not allow_new_classes:
        raise TrapkitError(f"unknown class names {unknown}; pick one of {', '.join(sorted(known))}")
    path = page_answers_path(run_dir)
    merged = _saved_answers(path)
    for p, species in answers.items():
        if species.strip():
            merged[p] = species.strip()
        else:
            merged.pop(p, None)
    rows = []
    for p in sorted(merged):
        folder, name = split_key(p)
        rows.append((name, folder.replace("/", "\\"), "true" if p in selected else "false", merged[p]))
    atomic_write_text(path, _csv_text(ANSWER_COLUMNS, rows))
    return path
