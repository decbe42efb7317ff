"""The Timelapse-compatible answers CSV shared by `al next`, the labelling page and the review page.

Columns (any order, any case): `File`, `RelativePath` (the folder, relative
to the image root, with Windows backslashes or slashes), `Species`, and
optionally `Selected` and `Detection`, plus any free extra columns
(Timelapse's `DateTime`, notes). `Detection` is the index of one detection
in that image's MegaDetector `detections` list: the answer labels that
detection only. Empty, or no such column: the answer is about the image and
labels every selected detection of it. An empty `Species` means "not
answered yet".

`WRONG_BOX` is the one reserved species: "not an animal, or a wrong box".
It is never a class and never trained on; the detection simply leaves the pool.

The reader takes what people actually save: Timelapse exports, Excel's CSV
(UTF-8 with a BOM, or Windows-1252, `;` delimiters, CRLF), Excel's "Unicode
Text" (UTF-16, tabs), broken quotes named by line.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trapkit.atomic import atomic_write_text
from trapkit.errors import TrapkitError

WRONG_BOX = "[wrong box]"
REQUEST_COLUMNS = ("File", "RelativePath", "Selected")
ANSWER_COLUMNS = ("File", "RelativePath", "Selected", "Species")
DETECTION_COLUMN = "Detection"
TRUE_VALUES = frozenset({"true", "1", "yes", "y", "x", "selected"})


@dataclass(frozen=True)
class Answer:
    where: str  # "file.csv line 7", for error messages
    path: str  # image path relative to the image root, '/' separated
    species: str
    selected: bool | None  # the row's Selected cell; None without that column
    detection: int | None = None  # index into the image's detections; None: the image as a whole

    @property
    def key(self) -> tuple[str, int | None]:
        return self.path, self.detection


def join_key(relative_path: str, file: str) -> str:
    """Timelapse's (RelativePath, File) as one '/'-separated path relative to the image root."""
    folder = relative_path.replace("\\", "/").strip().strip("/")
    if folder in ("", "."):
        return file.strip()
    return f"{folder.removeprefix('./')}/{file.strip()}"


def split_key(path: str) -> tuple[str, str]:
    """(folder with '/', file name) of an image path: the inverse of `join_key`."""
    folder, _, name = path.rpartition("/")
    return folder, name


def timelapse_folder(folder: str) -> str:
    """A '/' folder as Timelapse writes RelativePath (Windows backslashes)."""
    return folder.replace("/", "\\")


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
        rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except StopIteration:
        raise TrapkitError(f"{path} is empty; export the labels from Timelapse as CSV") from None
    except csv.Error as e:  # e.g. a quote that is never closed swallows the rest of the file
        raise TrapkitError(f"{path} line {reader.line_num} is not valid CSV ({e}); check its quotes, or save it "
                           "again from Timelapse or Excel") from None
    return [h.strip() for h in header], rows


def _detection(text: str, where: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise TrapkitError(f"{where}: Detection {text!r} is not a detection index (0, 1, 2, ...); leave it empty "
                           "to answer for the whole image")
    return int(text)


def read_answers(path: str | Path, data: bytes | None = None) -> list[Answer]:
    """Parse an answers CSV; rows with an empty Species are left out (not answered yet)."""
    path = Path(path)
    header, rows = read_rows(path, data)
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
        where = f"{path.name} line {line}"
        selected = cell(cells, "selected").lower() in TRUE_VALUES if "selected" in index else None
        answers.append(Answer(where, join_key(cell(cells, "relativepath"), cell(cells, "file")), species, selected,
                              _detection(cell(cells, "detection"), where)))
    return answers


# -- writing ----------------------------------------------------------------------------------

def csv_text(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    """CSV as Excel and Timelapse expect it (CRLF line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(list(header))
    writer.writerows(rows)
    return buf.getvalue()


def write_answers(path: str | Path, answers: Iterable[Answer]) -> None:
    """An answers CSV (atomic), sorted by image then detection; a `Detection` column when any answer has one."""
    answers = sorted(answers, key=lambda a: (a.path, -1 if a.detection is None else a.detection))
    with_detection = any(a.detection is not None for a in answers)
    rows = []
    for a in answers:
        folder, name = split_key(a.path)
        selected = "" if a.selected is None else ("true" if a.selected else "false")
        row = [name, timelapse_folder(folder), selected, a.species]
        if with_detection:
            row.append("" if a.detection is None else str(a.detection))
        rows.append(row)
    header = ANSWER_COLUMNS + ((DETECTION_COLUMN,) if with_detection else ())
    atomic_write_text(path, csv_text(header, rows))
