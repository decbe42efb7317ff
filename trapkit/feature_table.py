"""The features table of `trapkit classify --features`: one row per classified detection, its embedding as columns.

Columns, in this order (`FIXED_COLUMNS`, then the features):

    file                             the image, relative to IMAGES_DIR, as in the MegaDetector JSON
    frame                            the video frame (MegaDetector's clip.mp4/frame000123.jpg entries, or a
                                     video-level detection's frame_number); empty for photos
    detection_index                  index into that image's `detections` (0 for a whole image)
    detection_conf                   the detector's confidence
    bbox_x, bbox_y, bbox_w, bbox_h   MegaDetector's normalised [x, y, w, h] box
    time                             EXIF capture time, no time zone (Parquet: timestamp; CSV:
                                     `YYYY-MM-DD HH:MM:SS`); empty when the photo has none
    label, conf                      the top class and its confidence, as in the JSON (after post-processing
                                     and --smooth; empty when they left the detection without a class)
    f000 ... f{D-1}                  the graph's `embedding` output for the crop, float32 (at least 3 digits,
                                     more when D > 1000: f0000 ... f1279)

The model fingerprint (`FeatureMeta`: feature size, model digest, and the
crop policy that cut the crops) travels with the table: in Parquet as the
key-value metadata `trapkit.features` (JSON); for CSV in a sidecar
`FILE.csv.meta.json` with the same JSON, so the CSV stays plain for R and
spreadsheets (keep the two files together). Tables can be compared only when
feature size and model digest agree.

Resume: `FeatureParts` keeps each checkpointed chunk's embeddings (one `.npz`,
written atomically before the classify checkpoint that commits the chunk) in
a folder beside the checkpoint; the table is assembled from the parts and the
final JSON at the end of the run, so a resumed run writes the same file as an
uninterrupted one. pyarrow is imported inside the functions that use it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from trapkit import __version__
from trapkit.answers import neutralise, restore
from trapkit.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.sequences import parse_exif_time
from trapkit.video import split_frame
from trapkit.typed_json import checked, refuse_newer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "trapkit.features"
SIDECAR_SUFFIX = ".meta.json"  # features.csv -> features.csv.meta.json
SUFFIXES = (".parquet", ".csv")
FIXED_COLUMNS = ("file", "frame", "detection_index", "detection_conf", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
                 "time", "label", "conf")
_MAKE_ONE = "make one with trapkit classify ... --features FILE.parquet"


def require(what: str, *modules: str) -> None:
    """A one-line error, before any work, when a library of the `features` extra is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise TrapkitError(f"{what} needs {', '.join(missing)}; install them with pip install 'trapkit[features]'")


def feature_columns(size: int) -> list[str]:
    """['f000', 'f001', ...]: zero-padded so they sort in order."""
    digits = max(3, len(str(size - 1)))
    return [f"f{k:0{digits}d}" for k in range(size)]


def check_suffix(flag: str, path: str | Path) -> None:
    if Path(path).suffix.lower() not in SUFFIXES:
        raise TrapkitError(f"{flag} {path} must end in .parquet or .csv (the table's format)")


def sidecar(path: str | Path) -> Path:
    """Where a CSV table's metadata lives."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class FeatureMeta:
    """Which model made a table (`feature_size`, `model_digest`) and how its crops were cut."""

    feature_size: int
    model_digest: str  # "sha256:<the model file>", or "spec-sha256:<the spec JSON>" when no file is known (Triton)
    model: str
    input_size: int
    resize_mode: str
    interpolation: str
    margin: float
    whole_images: bool  # True: rows are whole images (classify without --detections), not crops
    trapkit_version: str = __version__
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_run(cls, runtime, prep, whole_images: bool) -> FeatureMeta:
        require("--features", "pyarrow")
        size = getattr(runtime, "embedding_size", None)
        if not size:
            raise TrapkitError(f"model {runtime.spec.name} gives no 'embedding' output, so --features has nothing "
                               "to write; re-export it with trapkit export")
        identity = getattr(runtime, "identity", None)
        digest = (f"sha256:{identity}" if identity
                  else "spec-sha256:" + hashlib.sha256(runtime.spec.to_json().encode()).hexdigest())
        return cls(int(size), digest, runtime.spec.name, prep.input_size, prep.resize_mode, prep.interpolation,
                   prep.margin, whole_images)

    @property
    def fingerprint(self) -> tuple[int, str]:
        return self.feature_size, self.model_digest

    def preprocessing(self):
        """The `trapkit.prepare.Preprocessing` that cut the table's crops (to cut them again for pictures)."""
        from trapkit.prepare import Preprocessing

        return Preprocessing(self.input_size, self.resize_mode, self.interpolation, self.margin)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> FeatureMeta:
        advice = f"it is not a trapkit features table; {_MAKE_ONE}"
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise TrapkitError(f"{where} has unreadable {METADATA_KEY} metadata; {advice}") from None
        if not isinstance(d, dict):
            raise TrapkitError(f"{where} has unreadable {METADATA_KEY} metadata; {advice}")
        refuse_newer(d.get("format_version"), FORMAT_VERSION, f"features table {where}")
        hints = {f.name: f.type for f in fields(cls)}
        types = {"int": int, "float": float, "str": str, "bool": bool}
        missing = [name for name in hints if name not in d]
        if missing:
            raise TrapkitError(f"{where} metadata lacks {', '.join(missing)}; {advice}")
        values = {name: checked(d[name], types[hints[name]], f"{where} metadata {name}", advice) for name in hints}
        if values["feature_size"] < 1:
            raise TrapkitError(f"{where} metadata feature_size must be at least 1; {advice}")
        return cls(**values)


def _schema(meta: FeatureMeta):
    import pyarrow as pa

    fixed = [("file", pa.string()), ("frame", pa.int32()), ("detection_index", pa.int32()),
             ("detection_conf", pa.float64()),
             ("bbox_x", pa.float64()), ("bbox_y", pa.float64()), ("bbox_w", pa.float64()), ("bbox_h", pa.float64()),
             ("time", pa.timestamp("s")), ("label", pa.string()), ("conf", pa.float64())]
    return pa.schema(fixed + [(name, pa.float32()) for name in feature_columns(meta.feature_size)],
                     metadata={METADATA_KEY: meta.to_json()})



class FeatureParts:
    """Each checkpointed chunk's embeddings, `part-<first image>.npz` in `folder` (keys (n, 2) int64: image and
    detection index; embedding (n, D) float32; images (m,) int64: every image the chunk covered)."""

    def __init__(self, folder: Path, meta: FeatureMeta):
        self.folder, self.meta = Path(folder), meta

    @classmethod
    def open(cls, folder: Path, checkpoint: Path, done: dict, meta: FeatureMeta | None) -> FeatureParts | None:
        """The parts of this run (None when `meta` is None: no --features), consistent with the checkpoint's
        `done` images: parts of an interrupted chunk are dropped (its images are redone)."""
        folder = Path(folder)
        if not done:  # a fresh start: anything here belongs to a run whose checkpoint was deleted
            if folder.exists():
                shutil.rmtree(folder)
            return cls(folder, meta) if meta is not None else None
        if meta is None:
            if folder.exists():
                raise TrapkitError(f"the interrupted run also wrote a features table; resume it with the same "
                                   f"--features FILE, or delete {checkpoint} to start over")
            return None
        parts = cls(folder, meta)
        covered = set()
        for path, images in parts._index():
            if images <= done.keys():
                covered |= images
            else:  # written, but its chunk's checkpoint was not: those images are classified again
                path.unlink()
        if not done.keys() <= covered:
            raise TrapkitError(f"the interrupted run did not write features (it was started without --features); "
                               f"resume it without --features, or delete {checkpoint} to start over")
        return parts

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz")) if self.folder.is_dir() else []

    def _load(self, path: Path, names: tuple[str, ...] = ("keys", "embedding", "images")) -> dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as z:  # reads only the arrays asked for
                return {k: z[k] for k in names}
        except (OSError, ValueError, KeyError) as e:
            raise TrapkitError(f"features checkpoint {path} is unreadable ({e.__class__.__name__}); "
                               "delete the classify checkpoint beside --out to start over") from None

    def _index(self):
        for path in self._files():
            yield path, {str(i) for i in self._load(path, ("images",))["images"].tolist()}

    def add(self, images: list[int], embeddings: dict[tuple[int, int], np.ndarray]) -> None:
        """One chunk: the images it covered and {(image, detection): (D,) embedding} for its classified crops."""
        keys = sorted(embeddings)
        d = self.meta.feature_size
        emb = np.stack([embeddings[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, d), np.float32)
        if emb.shape[1] != d:
            raise TrapkitError(f"the model returned {emb.shape[1]} features per crop, not {d}; check the model server")
        buf = io.BytesIO()
        np.savez(buf, keys=np.asarray(keys, np.int64).reshape(-1, 2), embedding=emb,
                 images=np.asarray(sorted(images), np.int64))
        atomic_write_bytes(self.folder / f"part-{min(images):09d}.npz", buf.getvalue())

    def chunks(self):
        """(keys (n, 2), embedding (n, D)) per part, in image order."""
        for path in self._files():
            part = self._load(path)
            yield part["keys"], part["embedding"]

    def write(self, path: str | Path, result: dict, done: dict) -> int:
        """The table at `path` (.parquet or .csv, atomically) from the parts and the final JSON; returns rows."""
        path, schema = Path(path), _schema(self.meta)
        csv = path.suffix.lower() == ".csv"
        if csv:
            atomic_write_text(sidecar(path), json.dumps(asdict(self.meta), indent=1, sort_keys=True) + "\n")
        rows = 0
        with atomic_path(path) as tmp:
            writer = _csv_writer(tmp, schema) if csv else _parquet_writer(tmp, schema)
            try:
                for keys, emb in self.chunks():
                    batch = _batch(schema, keys, emb, result, done, text=csv)
                    if batch.num_rows:
                        writer.write_batch(batch)
                        rows += batch.num_rows
                if not rows and not csv:
                    writer.write_table(schema.empty_table())  # a valid file with the schema, no rows
            finally:
                writer.close()
        log.info("wrote %d rows of %d features to %s", rows, self.meta.feature_size, path)
        return rows

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _parquet_writer(path: Path, schema):
    import pyarrow.parquet as pq

    # Dictionaries and min/max statistics only for the fixed columns: on a thousand float feature columns of
    # distinct values they cost more time than the data, and dictionaries fall back to plain encoding anyway.
    return pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=["file", "label"],
                            write_statistics=list(FIXED_COLUMNS))


def _csv_writer(path: Path, schema):
    import pyarrow.csv as pcsv

    return pcsv.CSVWriter(path, schema.remove_metadata(), write_options=pcsv.WriteOptions(quoting_style="needed"))


def _batch(schema, keys: np.ndarray, emb: np.ndarray, result: dict, done: dict, text: bool = False):
    """One record batch: the fixed columns from the final JSON (and EXIF times from `done`), then the features.

    `text` (a CSV): labels go through `trapkit.answers.neutralise`, so a spreadsheet never runs one as a formula
    (`_read_csv` restores them); file names stay exact."""
    import pyarrow as pa

    labels = result["classification_categories"]
    fixed = {name: [] for name in FIXED_COLUMNS}
    for i, j in keys.tolist():  # every key is a crop that ran through the graph
        im = result["images"][i]
        det = im["detections"][j]
        # Post-processing (an allow-list, class thresholds) may leave a detection without a class: empty label.
        top = (det.get("classifications") or [[None, None]])[0]
        x, y, w, h = det["bbox"]
        frame = (split_frame(im["file"]) or (None, None))[1]  # a frame entry, clip.mp4/frame000123.jpg
        number = det.get("frame_number")
        if isinstance(number, int) and not isinstance(number, bool):  # a video-level entry's detection
            frame = number
        for name, value in (("file", im["file"]), ("frame", frame), ("detection_index", j),
                            ("detection_conf", det.get("conf")),
                            ("bbox_x", x), ("bbox_y", y), ("bbox_w", w), ("bbox_h", h),
                            ("time", parse_exif_time(done[str(i)].get("time"))),
                            ("label", labels.get(top[0]) if top[0] is not None else None), ("conf", top[1])):
            fixed[name].append(neutralise(value) if text and name == "label" and value else value)
    feats = np.asfortranarray(emb, dtype=np.float32)  # (n, D): each column contiguous for Arrow
    arrays = [pa.array(fixed[f.name], f.type) for f in schema if f.name in fixed]
    arrays += [pa.array(feats[:, k]) for k in range(feats.shape[1])]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclass
class FeatureTable:
    """A features table read back: `frame` (pandas, the columns above), `meta`, and where it came from."""

    path: Path
    meta: FeatureMeta
    frame: object  # pandas.DataFrame

    @property
    def features(self) -> np.ndarray:
        """(n, D) float32."""
        return self.frame[feature_columns(self.meta.feature_size)].to_numpy(np.float32)


def read_features(path: str | Path) -> FeatureTable:
    """A table written by `trapkit classify --features`, checked; one-line errors for anything else."""
    path = Path(path)
    check_suffix("features table", path)
    if not path.is_file():
        raise TrapkitError(f"features table {path} does not exist; {_MAKE_ONE}")
    table, meta = _read_csv(path) if path.suffix.lower() == ".csv" else _read_parquet(path)
    wanted = [*FIXED_COLUMNS, *feature_columns(meta.feature_size)]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise TrapkitError(f"{path} lacks the columns {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                           f"of a trapkit features table; {_MAKE_ONE}")
    frame = table.select(wanted).to_pandas()
    if frame.empty:
        raise TrapkitError(f"features table {path} has no rows (nothing was classified); classify images with "
                           "detections first")
    return FeatureTable(path, meta, frame)


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise TrapkitError(f"{path} is not a readable Parquet file ({' '.join(str(e).split())[:120]}); "
                           f"{_MAKE_ONE}") from None
    text = (table.schema.metadata or {}).get(METADATA_KEY.encode())
    if text is None:
        raise TrapkitError(f"{path} is not a trapkit features table (no {METADATA_KEY} metadata); {_MAKE_ONE}")
    return table, FeatureMeta.from_json(text.decode("utf-8", "replace"), str(path))


def _read_csv(path: Path):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise TrapkitError(f"{path} has no {meta_path.name} beside it (the model fingerprint); keep the CSV and its "
                           f"{SIDECAR_SUFFIX} file together, or {_MAKE_ONE}")
    try:
        meta = FeatureMeta.from_json(meta_path.read_text(encoding="utf-8"), str(meta_path))
    except (OSError, UnicodeDecodeError) as e:
        raise TrapkitError(f"cannot read {meta_path} ({e.__class__.__name__}); {_MAKE_ONE}") from None
    types = {"file": pa.string(), "label": pa.string(), "time": pa.timestamp("s"), "detection_index": pa.int32(),
             "frame": pa.int32()}
    types |= {name: pa.float32() for name in feature_columns(meta.feature_size)}
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, OSError) as e:
        raise TrapkitError(f"{path} is not a readable features CSV ({' '.join(str(e).split())[:120]}); "
                           f"{_MAKE_ONE}") from None
    if "label" in table.column_names:  # labels were written through `neutralise`
        labels = [None if v is None else restore(v) for v in table.column("label").to_pylist()]
        table = table.set_column(table.column_names.index("label"), "label", pa.array(labels, pa.string()))
    return table, meta
