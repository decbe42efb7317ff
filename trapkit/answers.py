"""The answers book: the one Timelapse-compatible answers CSV of `al next`, the labelling page and the review page.

Columns (any order, any case): `File`, `RelativePath` (the folder, relative
to the image root, with Windows backslashes or slashes), `Species`, and
optionally `Detection`, `Selected`, `Reviewed` (when a person answered) and
`Reviewer` (who), plus any free extra columns (Timelapse's `DateTime`,
notes), which are kept. `Detection` is the index of one detection in that
image's MegaDetector `detections` list: the answer labels that detection
only. Empty, or no such column: the answer is about the image and labels
every selected detection of it. An empty `Species` means "not answered yet".

An answer is keyed by `(image path, detection)` (`Key`; the path relative to
the image root with '/', detection None for the image as a whole). Pages name
an item by `item_key`: `path` for an image, `path#2` for its detection 2.

`WRONG_BOX` is the one reserved species: "not an animal, or a wrong box".
It is never a class and never trained on; the detection simply leaves the pool.
Any case and spacing of it (`[Wrong  Box]`) reads as the marker. A species with
control characters (a newline, a tab) is refused: it would split rows and lines.

Spreadsheet formulas: a Species cell that starts with `=`, `+`, `-` or `@` is
written with a leading `'` (OWASP's advice against CSV injection), so Excel
shows it as text; reading removes that quote again, so a round trip changes
nothing. `File` and `RelativePath` are written exactly as they are, because
Timelapse matches them to the files on disk.

The reader takes what people actually save: Timelapse exports, Excel's CSV
(UTF-8 with a BOM, or Windows-1252, `;` delimiters, CRLF), Excel's "Unicode
Text" (UTF-16, tabs), broken quotes named by line.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from trapkit.atomic import atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.taxonomy import check_class_name

WRONG_BOX = "[wrong box]"
REQUEST_COLUMNS = ("File", "RelativePath", "Selected")
# What a book writes, in this order (optional ones when used), then any extra columns it read.
BOOK_COLUMNS = ("File", "RelativePath", "Detection", "Selected", "Species", "Reviewed", "Reviewer")
REQUIRED_COLUMNS = ("File", "RelativePath", "Species")
TRUE_VALUES = frozenset({"true", "1", "yes", "y", "x", "selected"})
FORMULA_STARTS = ("=", "+", "-", "@")  # what a spreadsheet would evaluate
TEXT_COLUMNS = ("Species", "Reviewer")  # written through `neutralise`, read through `restore`
_DETECTION = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes "٠" and "²"

Key = tuple[str, "int | None"]  # (image path, detection index or None for the image)


@dataclass(frozen=True)
class Answer:
    where: str  # "file.csv line 7", for error messages
    path: str  # image path relative to the image root, '/' separated
    species: str
    selected: bool | None = None  # the row's Selected cell; None without that column
    detection: int | None = None  # index into the image's detections; None: the image as a whole
    reviewed: str = ""  # when a person gave it (local time), if recorded
    reviewer: str = ""  # who gave it, if recorded

    @property
    def key(self) -> Key:
        return self.path, self.detection


def now() -> str:
    """A `Reviewed` cell: the local time, as Timelapse writes DateTime."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def item_key(path: str, detection: int | None) -> str:
    """How a page names an item: 'cam_a/img.jpg' for an image, 'cam_a/img.jpg#2' for its detection 2."""
    return path if detection is None else f"{path}#{detection}"


def join_key(relative_path: str, file: str) -> str:
    """Timelapse's (RelativePath, File) as one '/'-separated path relative to the image root."""
    folder = relative_path.replace("\\", "/").strip().strip("/")
    while folder.startswith("./"):
        folder = folder[2:]
    if folder in ("", "."):
        return file.strip()
    return f"{folder}/{file.strip()}"


def split_key(path: str) -> tuple[str, str]:
    """(folder with '/', file name) of an image path: the inverse of `join_key`."""
    folder, _, name = path.rpartition("/")
    return folder, name


def timelapse_folder(folder: str) -> str:
    """A '/' folder as Timelapse writes RelativePath (Windows backslashes)."""
    return folder.replace("/", "\\")


# -- cells ------------------------------------------------------------------------------------

def neutralise(cell: str) -> str:
    """A text cell safe from spreadsheet formulas: a leading `'` where it could be evaluated (lossless with
    `restore`)."""
    if cell.lstrip("'").startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def restore(cell: str) -> str:
    """The inverse of `neutralise`."""
    if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


def clean_species(text: str, where: str) -> str:
    """An answer or class name as given: stripped, the wrong-box marker in any case and spacing made
    `WRONG_BOX`; a one-line error for control characters."""
    name = check_class_name(text, f"{where}: species")
    if " ".join(name.split()).casefold() in (WRONG_BOX, "[wrongbox]"):
        return WRONG_BOX
    return name


def detection_index(text: str, where: str) -> int | None:
    """A `Detection` cell: an index (ASCII digits), or None when empty."""
    text = text.strip()
    if not text:
        return None
    if not _DETECTION.fullmatch(text):
        raise TrapkitError(f"{where}: Detection {text!r} is not a detection index (0, 1, 2, ...); leave it empty "
                           "to answer for the whole image")
    return int(text)


# -- reading ----------------------------------------------------------------------------------

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


def read_rows(path: str | Path, data: bytes | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header names, [(line number, cells)]) of a CSV in any of the dialects Excel and Timelapse write.

    `data`: the file's bytes when the caller has read them already (so what is parsed is what was hashed).
    """
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise TrapkitError(f"answers file {path} does not exist; check the --labels path")
        data = path.read_bytes()
    text = _decode(data, str(path))
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        rows, start = [], reader.line_num + 1
        for cells in reader:  # a quoted cell may span lines: a row is named by the line it starts on
            if any(c.strip() for c in cells):
                rows.append((start, cells))
            start = reader.line_num + 1
    except StopIteration:
        raise TrapkitError(f"{path} is empty; export the labels from Timelapse as CSV") from None
    except csv.Error as e:  # e.g. a quote that is never closed swallows the rest of the file
        raise TrapkitError(f"{path} line {reader.line_num} is not valid CSV ({e}); check its quotes, or save it "
                           "again from Timelapse or Excel") from None
    return [h.strip() for h in header], rows


@dataclass(frozen=True)
class _Table:
    header: list[str]  # as in the file
    rows: list[tuple[int, dict[str, str]]]  # (line, {canonical column name or extra header: cell, text restored})


def _read_table(path: Path, data: bytes | None = None) -> _Table:
    header, lines = read_rows(path, data)
    canonical = {c.lower(): c for c in BOOK_COLUMNS}
    names = [canonical.get(h.lower(), h) for h in header]
    for required in ("File", "Species"):
        if required not in names:
            raise TrapkitError(f"{path} has no '{required}' column (columns: {', '.join(header)}); "
                               "answer the request CSV by adding a Species column")
    rows = []
    for line, cells in lines:
        row = {n: (cells[i].strip() if i < len(cells) else "") for i, n in enumerate(names)}
        rows.append((line, {n: restore(c) if n in TEXT_COLUMNS else c for n, c in row.items()}))
    return _Table(names, rows)


def _answer(path: Path, line: int, row: dict[str, str]) -> Answer | None:
    """The row's answer; None while its Species is empty."""
    where = f"{path.name} line {line}"
    species = row.get("Species", "")
    if not species.strip():
        return None
    selected = row["Selected"].lower() in TRUE_VALUES if "Selected" in row else None
    return Answer(where, join_key(row.get("RelativePath", ""), row.get("File", "")), clean_species(species, where),
                  selected, detection_index(row.get("Detection", ""), where), row.get("Reviewed", ""),
                  row.get("Reviewer", ""))


def read_answers(path: str | Path, data: bytes | None = None) -> list[Answer]:
    """Parse an answers CSV, in file order; rows with an empty Species are left out (not answered yet)."""
    path = Path(path)
    table = _read_table(path, data)
    return [a for line, row in table.rows if (a := _answer(path, line, row)) is not None]


# -- writing ----------------------------------------------------------------------------------

def csv_text(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    """CSV as Excel and Timelapse expect it (CRLF line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(list(header))
    writer.writerows(rows)
    return buf.getvalue()


def _order(key: Key):
    path, detection = key
    return path, -1 if detection is None else detection


def _normal(key: Key) -> Key:
    """A key as files name it: the path through `join_key` ('./cam/x.jpg' and 'cam\\x.jpg' are 'cam/x.jpg')."""
    path, detection = key
    return join_key(*split_key(path.replace("\\", "/"))), detection


def _fill(row: dict[str, str], key: Key, species: str, selected: bool | None, reviewed: str, reviewer: str) -> None:
    """The cells of one answer (`key` normal), in a book row."""
    path, detection = key
    folder, name = split_key(path)
    row.update(File=name, RelativePath=timelapse_folder(folder), Species=species,
               Detection="" if detection is None else str(detection))
    if selected is not None:
        row["Selected"] = "true" if selected else "false"
    row.update({k: v for k, v in (("Reviewed", reviewed), ("Reviewer", reviewer)) if v})


class AnswersBook:
    """One answers CSV as a book of answers keyed by `(image path, detection)`.

    Read in any dialect `read_rows` takes; `merge` changes some answers and writes the whole file again
    atomically (sorted by image, then detection), keeping every row and column it does not change. The
    file is read again whenever it changed on disk since this book last wrote it, so a second server, a
    second tab's process or an editor never loses rows to this one.
    """

    def __init__(self, path: str | Path, option: str = "--answers", read: bool = True):
        self.path = Path(path)
        self.option = option  # how the user named the file, for error lines
        self.header: list[str] = list(REQUIRED_COLUMNS)
        self.rows: dict[Key, dict[str, str]] = {}  # every row, answered or not, by key (the last row wins)
        self.lines: dict[Key, int] = {}  # where each row was read, for error lines
        self._seen = None
        if read:
            self._read()

    def check_writable(self) -> None:
        """A one-line error, before any work, when the book cannot be written where it is."""
        path, option = self.path, self.option
        if path.is_dir():
            raise TrapkitError(f"{option} {path} is a folder; give a CSV file name")
        folder = path.parent
        if not folder.is_dir():
            blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
            if blocking is not None and not blocking.is_dir():
                raise TrapkitError(f"cannot write {option} {path}: {blocking} is a file, not a folder; "
                                   "choose another place")
            raise TrapkitError(f"cannot write {option} {path}: the folder {folder} does not exist; create it first")
        try:
            if path.exists():
                with open(path, "ab"):
                    pass
            with tempfile.TemporaryFile(dir=folder):  # answers are written to a temp file, then renamed
                pass
        except PermissionError:
            what = "the file is read-only" if path.exists() and not os.access(path, os.W_OK) else \
                f"no file can be made in {folder}"
            raise TrapkitError(f"cannot write {option} {path}: {what}; make it writable or choose another "
                               "file") from None
        except OSError as e:
            raise TrapkitError(f"cannot write {option} {path}: no file can be made in {folder} "
                               f"({e.strerror or e}); choose a writable place") from None

    def _signature(self):
        try:
            st = self.path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> None:
        self._seen = self._signature()
        self.rows, self.lines = {}, {}
        if self._seen is None or not self.path.is_file():
            return
        data = self.path.read_bytes()
        if not data.strip():
            return  # an empty file: start it
        try:
            table = _read_table(self.path, data)
        except TrapkitError as e:
            raise TrapkitError(f"{self.option} {self.path} is not an answers CSV ({e}); choose another file name to "
                               "start a new one") from None
        self.header = table.header
        for line, row in table.rows:
            where = f"{self.path.name} line {line}"
            key = (join_key(row.get("RelativePath", ""), row.get("File", "")),
                   detection_index(row.get("Detection", ""), where))
            self.rows[key], self.lines[key] = row, line

    def refresh(self) -> None:
        if self._signature() != self._seen:
            self._read()

    def answers(self) -> dict[Key, Answer]:
        """{key: Answer} of every answered row, as the file holds them now."""
        self.refresh()
        out = {}
        for key, row in self.rows.items():
            answer = _answer(self.path, self.lines.get(key, 0), row)
            if answer is not None:
                out[key] = answer
        return out

    def merge(self, changes: Mapping[Key, str | None], *, selected: bool | None = None, reviewed: str = "",
              reviewer: str = "") -> None:
        """Set (species) or withdraw (None or '') the answers of `changes` and write the file.

        `selected`, `reviewed`, `reviewer`: the cells written with each changed answer, when given.
        """
        self.refresh()
        for key, species in changes.items():
            key = _normal(key)
            if not species:
                self.rows.pop(key, None)
                continue
            _fill(self.rows.setdefault(key, {}), key, species, selected, reviewed, reviewer)
        self._write()

    def _write(self) -> None:
        used = {name for row in self.rows.values() for name, cell in row.items() if cell} | set(self.header)
        columns = [c for c in BOOK_COLUMNS if c in used or c in REQUIRED_COLUMNS]
        columns += [h for h in self.header if h not in columns]
        lines = []
        for key in sorted(self.rows, key=_order):
            row = self.rows[key]
            lines.append([neutralise(row.get(c, "")) if c in TEXT_COLUMNS else row.get(c, "") for c in columns])
        self.header = columns
        atomic_write_text(self.path, csv_text(columns, lines))
        self._seen = self._signature()


def write_answers(path: str | Path, answers: Iterable[Answer]) -> None:
    """A new answers CSV (atomic) holding `answers`, sorted by image then detection."""
    book = AnswersBook(path, read=False)
    for a in answers:
        key = _normal(a.key)
        _fill(book.rows.setdefault(key, {}), key, a.species, a.selected, a.reviewed, a.reviewer)
    book._write()
