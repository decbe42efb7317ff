"""`trapkit features`: a morphological space ecologists can analyse, from `trapkit classify --features` tables.

From one or more features tables of one model (feature size and model digest
must agree: `trapkit.feature_table`):

1. The space: each row's embedding L2-normalised (cosine geometry: a crop's
   feature magnitude follows its contrast and exposure more than its shape),
   then PCA to at most `SPACE_DIMS` dimensions (scikit-learn).
2. Morphs: k-means in that space (scikit-learn, 10 starts, fixed seed), K from
   `--morphs` or the K in 2..`--max-morphs` (below the number of distinct
   rows) with the best silhouette score; morph 0 is the largest. Rows that are
   all the same point make one morph ("no spread"), never several; rows with
   NaN or infinite features are left out, counted and listed in summary.json.
3. `map.png`: the space in two dimensions (PCA's first two components, or UMAP
   when umap-learn is installed and there are at least `UMAP_AUTO_MIN` rows),
   coloured by predicted species and by morph.
4. `morphs.csv`: every row's morph, distance to its centre and map position;
   `morph_examples.csv`: the rows nearest each centre. With `--images`,
   `morphs.png` shows their crops, cut again from the photos by the table's own
   crop policy (`trapkit.prepare.prepare_image`); without it there is no montage.
5. Per folder (camera, site) or per day (EXIF time): detections per morph,
   morphs present, Shannon's H (natural log, `scipy.stats.entropy`) and
   Simpson's index 1 - sum(p^2) (the chance that two detections drawn at random,
   with replacement, are of different morphs): `diversity_by_<folder|day>.csv`
   and `.png`.
6. `summary.json`: the numbers behind all of it.

scikit-learn, pandas and matplotlib are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from trapkit.atomic import atomic_write_bytes, atomic_write_text, check_writable
from trapkit.errors import TrapkitError
from trapkit.figures import figure_png, new_figure
from trapkit.images import ImageReadError, is_file_under, safe_join
from trapkit.feature_table import FeatureTable, feature_columns, read_features, require
from trapkit.ecology.settings import FeatureSettings

log = logging.getLogger(__name__)

SPACE_DIMS = 50
SILHOUETTE_SAMPLE = 5000  # silhouette is O(n^2): scored on a seeded sample of this many rows
NO_TIME = "no time"
UMAP_AUTO_MIN = 50  # --map auto: below this many detections UMAP's neighbourhoods mean little; PCA instead
_MAX_COLOURS = 10  # species beyond the 9 most frequent are drawn as "other"


@dataclass
class FeatureReport:
    """What `analyse_features` did and wrote."""

    rows: int
    morphs: int
    chosen_by: str  # "--morphs", "silhouette", or "no spread" (fewer than 2 distinct points)
    silhouette: dict[int, float]
    map_method: str
    out: Path
    written: list[Path] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # "table: file#detection" of rows with NaN or inf features
    distinct: int = 0


def analyse_features(tables: list[str | Path], out: str | Path, settings: FeatureSettings = FeatureSettings(),
                     images: str | Path | None = None) -> FeatureReport:
    """Read `tables`, build the space, morphs, map and diversity tables, and write them into `out`."""
    require("trapkit features", "pyarrow", "pandas", "sklearn", "scipy", "matplotlib")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrapkitError(f"--out {out} is a file; give a folder")
    check_writable("--out", out, out)
    if images is not None and not Path(images).is_dir():
        raise TrapkitError(f"--images {images} is not a folder; give the IMAGES_DIR given to trapkit classify")
    loaded = _read_all(tables)
    frame, x = _combined(loaded)
    frame, x, left_out = _finite_rows(frame, x, loaded)
    n = len(frame)
    if n < 2:
        raise TrapkitError(f"{_names(loaded)} holds {n} detection{'s' if n != 1 else ''} with finite features; "
                           "a morphological space needs at least 2")
    distinct = _distinct_points(x)
    if settings.morphs is not None and settings.morphs > distinct:
        raise TrapkitError(f"--morphs {settings.morphs} is more than the {distinct} distinct detections (of {n}) in "
                           f"{_names(loaded)}; choose at most {distinct}")

    with _sklearn_quiet():
        space = _space(x, settings.seed)  # (n, <= SPACE_DIMS)
        k, scores, chosen_by, fit = _choose_k(space, distinct, settings)
        morph, distance, _ = fit if fit is not None else _kmeans(space, k, settings.seed)
        xy, map_method = _map(space, settings)
    frame["morph"], frame["distance"], frame["map_x"], frame["map_y"] = morph, distance, xy[:, 0], xy[:, 1]
    log.debug("%d detections (%d distinct), %d morphs (%s), map by %s", n, distinct, k, chosen_by, map_method)

    meta = loaded[0].meta
    # Everything is made in memory first: a failure (a wrong --images) leaves no half-written folder.
    files: dict[str, bytes | str] = {"map.png": _map_png(frame, k, map_method)}
    columns = ["table", "file", "detection_index", "label", "conf", "time", "morph", "distance", "map_x", "map_y"]
    files["morphs.csv"] = frame[columns].to_csv(index=False, float_format="%.6g", date_format="%Y-%m-%d %H:%M:%S")
    examples = _examples(frame, k, settings.examples)
    files["morph_examples.csv"] = examples[["morph", "rank", "table", "file", "detection_index", "label",
                                            "distance"]].to_csv(index=False, float_format="%.6g")
    if images is not None:
        files["morphs.png"] = _montage_png(examples, frame, k, Path(images), meta)
    else:
        log.info("no --images: no montage (morph_examples.csv lists the detections nearest each morph centre)")
    diversity = _diversity(frame, k, settings.by)
    files[f"diversity_by_{settings.by}.csv"] = diversity.to_csv(index=False, float_format="%.6g")
    files[f"diversity_by_{settings.by}.png"] = _diversity_png(diversity, k, settings.by)
    files["summary.json"] = json.dumps({
        "tables": [t.path.name for t in loaded], "rows": n, "feature_size": meta.feature_size,
        "model": meta.model, "model_digest": meta.model_digest, "space_dims": int(space.shape[1]),
        "distinct_rows": distinct, "morphs": k, "chosen_by": chosen_by,
        "silhouette": {str(a): b for a, b in scores.items()},
        "map": map_method, "by": settings.by, "morph_sizes": np.bincount(morph, minlength=k).tolist(),
        "non_finite_left_out": left_out,
    }, indent=1) + "\n"
    report = FeatureReport(n, k, chosen_by, scores, map_method, out, left_out=left_out, distinct=distinct)
    for name, data in files.items():
        (atomic_write_text if isinstance(data, str) else atomic_write_bytes)(out / name, data)
        report.written.append(out / name)
    return report


# -- reading -------------------------------------------------------------------------------------------------------

def _read_all(tables) -> list[FeatureTable]:
    if not tables:
        raise TrapkitError("give at least one features table (from trapkit classify --features)")
    loaded = [read_features(t) for t in tables]
    first = loaded[0]
    for other in loaded[1:]:
        if other.meta.fingerprint != first.meta.fingerprint:
            what = (f"feature size {other.meta.feature_size} vs {first.meta.feature_size}"
                    if other.meta.feature_size != first.meta.feature_size
                    else f"model digest {other.meta.model_digest[:19]} vs {first.meta.model_digest[:19]}")
            raise TrapkitError(f"{other.path} comes from another model than {first.path} ({what}); features of "
                               "different models cannot be compared: classify both with the same --model")
        if other.meta.preprocessing() != first.meta.preprocessing():
            log.warning("%s was cropped differently from %s (same model); the montage uses the first's crop policy",
                        other.path, first.path)
    return loaded


def _combined(loaded: list[FeatureTable]):
    """(frame of the fixed columns with a `table` column, (n, D) float32 features)."""
    import pandas as pd

    frames, feats = [], []
    for t in loaded:
        f = t.frame.drop(columns=feature_columns(t.meta.feature_size))
        f.insert(0, "table", t.path.name)
        frames.append(f)
        feats.append(t.features)
    return pd.concat(frames, ignore_index=True), np.concatenate(feats)


def _names(loaded: list[FeatureTable]) -> str:
    return ", ".join(str(t.path) for t in loaded[:3]) + (" ..." if len(loaded) > 3 else "")


def _finite_rows(frame, x: np.ndarray, loaded: list[FeatureTable]):
    """(frame, x) without the rows whose features hold NaN or inf, and those rows named; none left is an error."""
    finite = np.isfinite(x).all(axis=1)
    if finite.all():
        return frame, x, []
    bad = frame.loc[~finite]
    named = [f"{t}: {f}#{d}" for t, f, d in zip(bad["table"], bad["file"], bad["detection_index"])]
    if not finite.any():
        raise TrapkitError(f"every row of {_names(loaded)} has NaN or infinite features; the table is damaged: "
                           "classify the images again with --features")
    log.warning("%d of %d detections have NaN or infinite features and are left out of the morphs (e.g. %s); "
                "summary.json lists them", len(named), len(frame), named[0])
    return frame.loc[finite].reset_index(drop=True), x[finite], named


def _distinct_points(x: np.ndarray) -> int:
    """How many different points the rows make once L2-normalised (identical crops give identical rows)."""
    from sklearn.preprocessing import normalize

    return len(np.unique(np.round(normalize(x.astype(np.float64)), 6), axis=0))


@contextlib.contextmanager
def _sklearn_quiet():
    """scikit-learn's and UMAP's warnings go to the debug log, not the terminal: the cases behind them (ties,
    too few distinct points) are handled and reported here in words."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("%s: %s", w.category.__name__, w.message)


# -- the space, morphs, map ----------------------------------------------------------------------------------------

def _space(x: np.ndarray, seed: int) -> np.ndarray:
    """(n, D) features -> (n, d) L2-normalised and PCA-reduced, d <= SPACE_DIMS."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    x = normalize(x.astype(np.float64))  # rows are finite: `_finite_rows` left out the others
    dims = max(1, min(SPACE_DIMS, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=dims, random_state=seed).fit_transform(x)


def _choose_k(space: np.ndarray, distinct: int, settings: FeatureSettings):
    """K, the silhouette score of every K tried ({} when K was given or there is no spread), how K was chosen, and
    the k-means fit of the chosen K when one was made here (None otherwise)."""
    if settings.morphs is not None:
        return settings.morphs, {}, "--morphs", None
    if distinct < 2:
        log.info("every detection has the same features: one morph (no spread to divide)")
        return 1, {}, "no spread", None
    from sklearn.metrics import silhouette_score

    n = len(space)
    scores, best, best_fit = {}, None, None
    for k in range(2, min(settings.max_morphs, distinct, n - 1) + 1):  # a silhouette needs 2 <= K <= n - 1
        fit = _kmeans(space, k, settings.seed)
        if len(set(fit[0].tolist())) < 2:
            continue
        scores[k] = round(float(silhouette_score(space, fit[0], sample_size=min(n, SILHOUETTE_SAMPLE),
                                                 random_state=settings.seed)), 4)
        if best is None or scores[k] > scores[best]:  # the best score, the smallest K among equals
            best, best_fit = k, fit
    if not scores:
        return 1, {}, "no spread", None
    return best, scores, "silhouette", best_fit


def _kmeans(space: np.ndarray, k: int, seed: int):
    """(morph (n,) int, distance to its centre (n,), centres (k, d)); morph 0 the largest, ties by first row."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(space)
    labels = km.labels_
    sizes = np.bincount(labels, minlength=k)
    first = [int(np.flatnonzero(labels == c)[0]) if sizes[c] else len(labels) for c in range(k)]
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    centres = km.cluster_centers_[order]
    morph = rank[labels]
    distance = np.linalg.norm(space - centres[morph], axis=1)
    return morph, distance, centres


def _map(space: np.ndarray, settings: FeatureSettings) -> tuple[np.ndarray, str]:
    """(n, 2) map coordinates and the method's name."""
    import importlib.util

    n = len(space)
    installed = importlib.util.find_spec("umap") is not None  # optional: pip install umap-learn
    if settings.map == "umap" and not installed:
        raise TrapkitError("--map umap needs umap-learn; pip install umap-learn, or use --map pca")
    wanted = settings.map == "umap" or (settings.map == "auto" and installed and n >= UMAP_AUTO_MIN)
    if settings.map == "auto" and not installed and n >= UMAP_AUTO_MIN:
        log.info("umap-learn is not installed, so the map is PCA (pip install umap-learn for a UMAP map)")
    if wanted and n >= 5:
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=settings.seed,
                            n_jobs=1)  # a seed makes UMAP single-threaded anyway
        return np.asarray(reducer.fit_transform(space), np.float64), "UMAP"
    if wanted:
        log.info("UMAP needs at least 5 detections; the map is PCA")
    xy = space[:, :2]
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return xy, "PCA"


# -- tables --------------------------------------------------------------------------------------------------------

def _examples(frame, k: int, per_morph: int):
    """The `per_morph` rows nearest each morph centre, with their rank (0: nearest)."""
    picked = (frame.sort_values(["morph", "distance", "table", "file", "detection_index"], kind="stable")
              .groupby("morph", sort=True).head(per_morph).copy())
    picked["rank"] = picked.groupby("morph").cumcount()
    return picked


def _diversity(frame, k: int, by: str):
    """One row per folder or day: detections, morphs present, Shannon, Simpson, then detections per morph."""
    import pandas as pd
    from scipy.stats import entropy

    if by == "folder":
        group = frame["file"].map(lambda f: PurePosixPath(f).parent.as_posix())
    else:
        group = frame["time"].map(lambda t: t.strftime("%Y-%m-%d") if pd.notna(t) else NO_TIME)
        missing = int((group == NO_TIME).sum())
        if missing:
            log.warning("%d detections have no EXIF capture time; counted under '%s'", missing, NO_TIME)
    counts = pd.crosstab(group, frame["morph"]).reindex(columns=range(k), fill_value=0)
    counts = counts.sort_index(key=lambda idx: idx.map(lambda g: (g == NO_TIME, g)))
    values = counts.to_numpy(np.float64)
    p = values / values.sum(axis=1, keepdims=True)
    table = pd.DataFrame({
        by: counts.index.astype(str),
        "detections": values.sum(axis=1).astype(int),
        "morphs_present": (values > 0).sum(axis=1),
        "shannon": entropy(values, axis=1),
        "simpson": 1.0 - (p ** 2).sum(axis=1),
    })
    for c in range(k):
        table[f"morph_{c}"] = values[:, c].astype(int)
    return table


# -- pictures ------------------------------------------------------------------------------------------------------

def _short(label: str, width: int = 22) -> str:
    """An ImageNet-style 'tusker' or 'African elephant, Loxodonta africana' as a legend entry."""
    text = str(label).split(",")[0].strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def _colours(n: int, morphs: bool = False):
    """`n` distinct colours: species and morphs from different palettes, so the two panels are not confused."""
    from matplotlib import colormaps

    cmap = colormaps[("Dark2" if n <= 8 else "tab20b") if morphs else ("tab10" if n <= 10 else "tab20")]
    return [cmap(i % cmap.N) for i in range(n)]


def _map_png(frame, k: int, method: str) -> bytes:
    fig = new_figure(12, 5.2)
    by_species, by_morph = fig.subplots(1, 2)
    size = float(np.clip(3000 / max(len(frame), 1), 6, 60))
    counts = frame["label"].value_counts(sort=True)
    top = list(counts.index[: _MAX_COLOURS - 1]) if len(counts) > _MAX_COLOURS else list(counts.index)
    shown = frame["label"].where(frame["label"].isin(top), "other")
    for label, colour in zip([*top, "other"], [*_colours(len(top)), (0.6, 0.6, 0.6, 1.0)]):
        rows = frame[shown == label]
        if len(rows):
            by_species.scatter(rows["map_x"], rows["map_y"], s=size, color=colour, alpha=0.8, linewidths=0,
                               label=f"{_short(label)} ({len(rows)})")
    by_species.set_title(f"predicted species ({len(frame)} detections)")
    by_species.legend(fontsize=7, loc="best", markerscale=max(1.0, 20 / size))
    colours = _colours(k, morphs=True)
    for m in range(k):
        rows = frame[frame["morph"] == m]
        if rows.empty:  # --morphs above the number of distinct rows leaves a morph empty
            continue
        by_morph.scatter(rows["map_x"], rows["map_y"], s=size, color=colours[m], alpha=0.8, linewidths=0)
        # The morph's number beside its members' mean, offset so a morph of one keeps its point visible.
        by_morph.annotate(str(m), (rows["map_x"].mean(), rows["map_y"].mean()), xytext=(9, 9),
                          textcoords="offset points", fontsize=10, weight="bold", ha="center", va="center",
                          color="black", bbox={"boxstyle": "circle,pad=0.2", "fc": "white", "ec": colours[m],
                                               "alpha": 0.85})
    by_morph.set_title(f"{k} morphs (k-means)")
    for ax in (by_species, by_morph):
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
        ax.tick_params(labelsize=7)
    return figure_png(fig, dpi=80)


def _example_crops(examples, images: Path, meta) -> dict[tuple[int, int], np.ndarray]:
    """{(morph, rank): (S, S, 3) uint8} for the example rows, cut again by the table's crop policy: photos
    through `trapkit.prepare.prepare_image`, video frames from the video itself (one decoding pass each)."""
    from trapkit.prepare import crops_from_image, prepare_image
    from trapkit import video as vid

    prep = meta.preprocessing()
    photos = defaultdict(list)  # file -> [(morph, rank, box)]
    videos = defaultdict(lambda: defaultdict(list))  # video -> frame number -> [(morph, rank, box)]
    for row in examples.itertuples(index=False):
        item = (row.morph, row.rank, [row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h])
        frame = vid.split_frame(row.file)
        if frame is not None and is_file_under(images, frame[0]):  # MegaDetector's clip.mp4/frame000123.jpg
            videos[frame[0]][frame[1]].append(item)
        elif vid.is_video_file(row.file) and row.frame == row.frame and row.frame is not None:  # not NaN or None
            videos[row.file][int(row.frame)].append(item)  # a detection of a video-level entry
        else:
            photos[row.file].append(item)

    crops, missing = {}, []

    def keep(items, cut):
        """`cut(boxes or None)` -> (k, S, S, 3): one crop per item's box, or the whole frame for every item."""
        made = cut(None if meta.whole_images else [box for _, _, box in items])
        for n, (m, rank, _) in enumerate(items):
            crops[(m, rank)] = made[0 if meta.whole_images else n]

    for file, items in photos.items():
        try:
            keep(items, lambda boxes: prepare_image(safe_join(images, file), boxes, prep).crops)
        except ImageReadError as e:
            missing.append(file)
            log.warning("montage: %s", e)
    for video, frames in videos.items():
        try:
            vid.require_av()
            for number, img, failure in vid.read_frames(safe_join(images, video), frames):
                if failure is not None:
                    log.warning("montage: %s frame %d: %s", video, number, failure)
                    continue
                keep(frames[number], lambda boxes: crops_from_image(img, boxes, prep))
        except TrapkitError as e:  # a missing or unreadable video, or no PyAV: its tiles stay grey
            missing.append(video)
            log.warning("montage: %s", e)
    if missing and len(missing) == len(photos) + len(videos):
        raise TrapkitError(f"--images {images} holds none of the montage's photos ({missing[0]} is missing); "
                           "give the IMAGES_DIR given to trapkit classify")
    return crops


def _montage_png(examples, frame, k: int, images: Path, meta) -> bytes:
    """K rows of the crops nearest each morph centre (`_example_crops`); grey tiles for any not found."""
    crops = _example_crops(examples, images, meta)
    cols = int(examples["rank"].max()) + 1
    fig = new_figure(1.25 * cols + 0.3, 1.45 * k + 0.2)
    axes = np.atleast_2d(fig.subplots(k, cols, squeeze=False))
    sizes = np.bincount(frame["morph"], minlength=k)
    for m in range(k):
        labels = frame.loc[frame["morph"] == m, "label"].value_counts()
        for c in range(cols):
            ax = axes[m, c]
            ax.set_xticks([])
            ax.set_yticks([])
            crop = crops.get((m, c))
            if crop is not None:
                ax.imshow(crop)
            elif c < sizes[m]:  # a photo not found under --images: a grey tile
                ax.set_facecolor((0.85, 0.85, 0.85))
            else:  # the morph has fewer members than columns
                ax.set_frame_on(False)
            if c == 0:
                top = _short(labels.index[0], 14) if len(labels) else "-"
                ax.set_ylabel(f"morph {m}\n{sizes[m]} det.\n{top}", fontsize=7)
    return figure_png(fig, dpi=80)


def _diversity_png(table, k: int, by: str) -> bytes:
    groups = table[by].tolist()
    fig = new_figure(max(6.0, 0.45 * len(groups) + 4.0), 5.0)
    counts_ax, index_ax = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(groups))
    bottom = np.zeros(len(groups))
    for m, colour in zip(range(k), _colours(k, morphs=True)):
        values = table[f"morph_{m}"].to_numpy()
        counts_ax.bar(x, values, bottom=bottom, color=colour, label=f"morph {m}", width=0.8)
        bottom += values
    counts_ax.set_ylabel("detections")
    counts_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    index_ax.plot(x, table["shannon"], "o-", label="Shannon H")
    index_ax.plot(x, table["simpson"], "s--", label="Simpson 1 - sum p²")
    index_ax.set_ylabel("morph diversity")
    index_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    step = max(1, len(groups) // 20)  # at most ~20 tick labels
    index_ax.set_xticks(x[::step], [g if len(g) <= 18 else "…" + g[-17:] for g in groups[::step]], rotation=60,
                        ha="right", fontsize=7)
    index_ax.set_xlabel(by)
    return figure_png(fig, dpi=80)


def describe(report: FeatureReport) -> str:
    """The lines `trapkit features` prints."""
    if report.silhouette:
        how = f"best silhouette of K = {min(report.silhouette)}..{max(report.silhouette)}"
    elif report.chosen_by == "no spread":
        how = "no spread: every detection has the same features" if report.distinct < 2 else \
            "too few distinct detections to compare K"
    else:
        how = report.chosen_by
    lines = [f"{report.rows} detections, {report.morphs} morph{'s' if report.morphs != 1 else ''} ({how}); "
             f"map: {report.map_method}"]
    if report.left_out:
        lines.append(f"{len(report.left_out)} detections with NaN or infinite features left out (summary.json)")
    lines += [f"wrote {p}" for p in report.written]
    return "\n".join(lines)
