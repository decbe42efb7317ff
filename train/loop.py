"""The active-learning loop: `init`, `next`, `status`, `simulate`. Each call does one step and returns.

An item is an image, or, in a run on MegaDetector detections (`--detections`),
one qualifying detection in an image: one manifest row, one embedding, one
label. A round: (finetune the embedder when enough new labels arrived) ->
embed every item (cached per embedder version) -> fit the head -> save the
deployable model -> evaluate on the validation set -> select -> write the
label request -> commit `state.json`. See `trapkit.train.run` for the files
and why a kill at any point loses no ingested label; `al init` and `al next`
hold the run's lock throughout, so two never interleave.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from trapkit.answers import WRONG_BOX, read_answers
from trapkit.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.spec import ModelSpec
from trapkit.taxonomy import read_taxonomy_csv
from trapkit.train import cold_start
from trapkit.train import labels as labels_mod
from trapkit.train.metrics import FORMAT_VERSION as METRICS_FORMAT_VERSION
from trapkit.train.run import (
    LABELLED_ROOT,
    MANIFEST_COLUMNS,
    OK,
    POOL,
    POOL_ROOT,
    SEASON_ROOT,
    SEED,
    UNREADABLE,
    VALIDATION,
    VALIDATION_ROOT,
    Item,
    kill_point,
    Run,
    trained_mask,
    RunState,
    format_box,
)
from trapkit.train.runinfo import run_taxonomy, write_taxonomy
from trapkit.train.settings import RunSettings

log = logging.getLogger(__name__)

BASE_EMBEDDER = "base"
REQUEST_FORMAT_VERSION = 1  # rounds/NNN/request.json: what a round asked about
_PAGE_FILE = re.compile(r"round-(\d+)-page\.csv")


@dataclass
class RoundResult:
    round: int
    request: Path
    requested: int  # items asked about
    labels: int  # labelled items trained on (seed included)
    metrics: dict
    ingest: labels_mod.IngestReport | None = None
    problems: list[str] = field(default_factory=list)
    per_class: dict = field(default_factory=dict)  # `trapkit.train.metrics.class_table`


def head_classes(committed, df) -> tuple[str, ...]:
    """The head's class order, decided here and only here: the committed classes, then any class the manifest
    holds beyond them (ingested by this round, or by one that was killed), sorted. So a round gives the same
    order whether or not an earlier attempt of it was killed."""
    seen = set(df.loc[df["label"] != "", "label"].unique()) - {WRONG_BOX}
    return tuple(committed) + tuple(sorted(seen - set(committed)))




def _candidate_mask(df) -> np.ndarray:
    """Pool items that can be asked about: unlabelled, readable, and not answered with a higher taxon already."""
    return ((df["split"] == POOL) & (df["label"] == "") & (df["taxon"] == "") & (df["status"] == OK)).to_numpy()


# -- building the manifest ------------------------------------------------------------------

def _rows(split: str, root: str, items, label=lambda item: "") -> list[dict]:
    """Manifest rows for `items`: (path, class) of whole images, or `trapkit.train.scan.Detection`s."""
    from trapkit.train.scan import Detection

    rows = []
    for item in items:
        if isinstance(item, Detection):
            rows.append({"split": split, "root": root, "path": item.path, "detection": str(item.index),
                         "bbox": format_box(item.bbox), "label": label(item), "prior_guess": item.prior_guess,
                         "prior_confidence": item.prior_confidence, "conf": item.conf, "category": item.category})
        else:
            path, cls = item if isinstance(item, tuple) else (item, "")
            rows.append({"split": split, "root": root, "path": path, "detection": "", "bbox": "", "label": cls})
    return rows


def _frame(rows: list[dict], added_round: int):
    import pandas as pd

    df = pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c not in ("label_round", "status", "added_round")])
    df = df.fillna("")
    df["label_round"] = np.where(df["split"] == POOL, -1, 0)
    df["status"], df["added_round"] = OK, added_round
    return df.loc[:, list(MANIFEST_COLUMNS)]


def _labelled_rows(settings: RunSettings, which: str) -> tuple[list, list[str], list[str]]:
    """(rows, classes, problems) of the seed ("labelled") or validation tree, whole images or detections."""
    from trapkit.train.scan import labelled_detections, scan_labelled

    data = settings.data
    folder, md, option, split, root = (
        (data.labelled, data.seed_detections, "--seed-detections", SEED, LABELLED_ROOT) if which == LABELLED_ROOT
        else (data.validation, data.validation_detections, "--validation-detections", VALIDATION, VALIDATION_ROOT))
    tree_option = "--labelled" if which == LABELLED_ROOT else "--validation"
    if md is None:  # whole images: in a run on detections, crops already made (the mewc-snip layout)
        tree = scan_labelled(folder, tree_option)
        return _rows(split, root, tree.items), tree.classes, tree.problems
    tree, found = labelled_detections(folder, md, data.threshold, data.categories, option, tree_option)
    return _rows(split, root, found, lambda d: d.path.split("/", 1)[0]), tree.classes, tree.problems


def _pool_rows(settings: RunSettings, folder: str, detections: str | None, option: str, prefix: str = "",
               root: str = POOL_ROOT):
    """(rows, images without a qualifying detection, problems) of the pool folder or a season; a season's paths
    start with `prefix` and are read from `root`."""
    from trapkit.train.scan import detection_items, scan_pool

    if detections is None:
        return _rows(POOL, root, [f"{prefix}{p}" for p in scan_pool(folder, option)]), [], []
    found = detection_items(folder, detections, settings.data.threshold, settings.data.categories,
                            "--detections", option)
    items = [replace(d, path=f"{prefix}{d.path}") for d in found.items]
    if not items:
        raise TrapkitError(f"no detection in {detections} is at or above --threshold {settings.data.threshold} in "
                           f"categories {', '.join(settings.data.categories)}; lower --threshold or check --categories")
    return _rows(POOL, root, items), [f"{prefix}{p}" for p in found.without], found.problems


def _stratified_holdout(rows: list[dict], fraction: float, rng: np.random.Generator) -> set[str]:
    """Images held out for validation: `fraction` of each class's images when it has 3+ (at least one kept
    for training). Whole images: an image's detections stay together."""
    held: set[str] = set()
    by_class: dict[str, list[str]] = {}
    for r in rows:
        paths = by_class.setdefault(r["label"], [])
        if not paths or paths[-1] != r["path"]:
            paths.append(r["path"])
    for c, paths in sorted(by_class.items()):
        paths = sorted(set(paths))
        k = min(int(round(len(paths) * fraction)), len(paths) - 1) if len(paths) >= 3 else 0
        held.update(rng.choice(paths, size=k, replace=False).tolist() if k else [])
    return held


# -- init ---------------------------------------------------------------------------------

def init_run(run_dir: str | Path, settings: RunSettings, taxonomy: str | Path | None = None,
             cluster=None) -> RoundResult:
    """Scan the trees (or read the detections files), write manifest and settings, and run round 1.

    `cluster` (`trapkit.cluster.ClusterSettings`): embed the items on that Ray cluster.

    `taxonomy`: a `label,taxonomy` CSV with one row per seed class (`trapkit.taxonomy`); it is
    copied to RUN/taxonomy.csv and every round's model spec carries its strings. Bad inputs stop the
    command before the run folder is made.
    """
    run = Run(run_dir)
    _refuse_existing(run)
    if not settings.data.unlabelled:
        raise TrapkitError("give --unlabelled (the pool of images to label), and --labelled (one folder per class) "
                           "if you have labelled images")
    start = _initial_manifest(settings, taxonomy)
    with run.command("al init"):
        _refuse_existing(run)  # again, under the lock: a run may have been started meanwhile
        for problem in start.problems:  # found before RUN/trapkit.log was open; the terminal shows them at the end
            log.debug("note: %s", problem)
        if start.taxonomy is not None:
            write_taxonomy(run.taxonomy_path, list(start.classes), start.taxonomy)
        settings.save(run.settings_path)
        run.save_manifest(start.df)
        state = RunState(round=0, classes=start.classes, scan_problems=tuple(start.problems),
                         images_without_detections=start.without, run_id=uuid.uuid4().hex)
        run.save_state(state)
        df = start.df
        log.info("run %s: %d seed items in %d classes, %d validation, %d in the pool", run.root,
                 int((df["split"] == SEED).sum()), len(state.classes), int((df["split"] == VALIDATION).sum()),
                 int((df["split"] == POOL).sum()))
        result = _run_round(run, settings, state, df, 1, cluster)
        result.problems = list(start.problems)
        if not result.labels:
            result.problems.append(cold_start.note(settings, result.requested))
        return result


def _refuse_existing(run: Run) -> None:
    if run.state_path.is_file() and run.load_state().round > 0:
        raise TrapkitError(f"{run.root} already holds a run; continue it with 'trapkit al next {run.root}', "
                           "or pick a new folder")


@dataclass
class _Start:
    """What `al init` reads before it writes anything."""

    df: object  # the manifest (pandas DataFrame)
    classes: tuple[str, ...]  # sorted: the first head order
    problems: list[str]
    without: int  # pool images with no qualifying detection
    taxonomy: tuple[str, ...] | None


def _initial_manifest(settings: RunSettings, taxonomy) -> _Start:
    from trapkit.train.backbones import backbone_preprocessing, weight_warnings

    cold = not settings.data.labelled  # no seed: round 1 covers the pool (trapkit.train.cold_start)
    seed_rows, seed_classes, problems = _labelled_rows(settings, LABELLED_ROOT) if not cold else ([], [], [])
    pool, without, pool_problems = _pool_rows(settings, settings.data.unlabelled, settings.data.detections,
                                              "--unlabelled")
    problems = [*weight_warnings(settings.model.weights), *problems, *pool_problems]
    rows, rng = [], np.random.default_rng(settings.select.seed)
    if settings.data.validation:
        val_rows, val_classes, val_problems = _labelled_rows(settings, VALIDATION_ROOT)
        problems += val_problems
        extra = sorted(set(val_classes) - set(seed_classes))
        if cold:  # the validation folder names the run's classes
            seed_classes = val_classes
        elif extra:
            raise TrapkitError(f"--validation has classes the seed lacks ({', '.join(extra)}); add seed images "
                               "for them or remove them from the validation folder")
        held = set()
        rows += val_rows
    else:
        held = _stratified_holdout(seed_rows, settings.data.validation_fraction, rng)
        rows += [r | {"split": VALIDATION} for r in seed_rows if r["path"] in held]
        if not held and not cold:
            problems.append("no validation folder and the seed is too small to hold images out; "
                            "metrics are not measured (give --validation)")
    rows += [r for r in seed_rows if r["path"] not in held] + pool
    if taxonomy is not None and not seed_classes:
        raise TrapkitError("--taxonomy needs the run's class names: give --labelled or --validation, or start "
                           "without --taxonomy")
    strings = read_taxonomy_csv(taxonomy, sorted(seed_classes)) if taxonomy is not None else None
    if without:
        problems.append(f"{len(without)} pool image(s) have no detection at or above the threshold and are left "
                        "out of the pool")
    if settings.model.input_size is None:
        settings.model.input_size = backbone_preprocessing(settings.model.backbone, settings.model.weights).input_size
    return _Start(_frame(rows, added_round=1), tuple(sorted(seed_classes)), problems, len(without), strings)


# -- next ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _InboxFile:
    path: Path
    digest: str  # sha256 of the bytes ingested: only a file still holding them is moved to inbox/done/
    answers: list


def next_round(run_dir: str | Path, label_files: list[str | Path] = (), flags: dict | None = None,
               allow_new_classes: bool = False, rescan: bool = False, add_pool: str | Path | None = None,
               add_detections: str | Path | None = None, cluster=None,
               labels_root: str | Path | None = None) -> RoundResult:
    """Ingest answers (files given and RUN/inbox/*.csv), then run the next round (`cluster`: as for `init_run`).

    `rescan` adds images that appeared in the pool folder since the last scan (whole-image runs);
    `add_pool` adds a season from any folder, with `add_detections` its MegaDetector file in a run on
    detections. Answers files name images relative to the pool folder or to a season folder: each file is
    matched to the one folder all its images are under (`labels_root` says which, where two fit; answers
    given with `add_pool` are taken as that season's where they fit it). The round is one transaction
    (`trapkit.train.run`): items, seasons, labels and settings change together, or not at all.
    """
    from trapkit.train.settings import resolve

    run = Run(run_dir)
    run.require()
    with run.command("al next"):
        state = run.load_state()
        if state.round == 0:
            raise TrapkitError(f"'trapkit al init' did not finish for {run.root}; run it again with the same options")
        settings = resolve(flags=flags, base=run.settings())
        df = run.load_manifest()
        n = state.round + 1
        if rescan:
            df = _rescan_pool(settings, df, n)
        season = None
        if add_pool is not None:
            df, season = _add_season(settings, state, df, Path(add_pool), add_detections, n)
        elif add_detections is not None:
            raise TrapkitError("--detections on 'al next' is the new season's file; add --add-pool DIR")
        # A run started without a seed or validation folder has no class until its first answers name them.
        report, inbox = _ingest_answers(run, settings, state, df, label_files, allow_new_classes or not state.classes,
                                        n, _labels_root(settings, labels_root), season)
        if not (df["label_round"] > state.round).any() and not (df["added_round"] > state.round).any():
            raise TrapkitError(
                f"no new labels; fill the Species column of {run.request_path(state.round)} and pass it with "
                f"--labels, or save answers into {run.inbox_dir}/"
            )
        log.info("answers: %s", report.summary())
        held = cold_start.hold_out_first_answers(df, settings, n, _stratified_holdout)  # in memory, committed
        state.classes = head_classes(state.classes, df)
        result = _run_round(run, settings, state, df, n, cluster, {f.path.name: f.digest for f in inbox})
        result.ingest = report
        result.problems = list(report.warnings) + ([
            f"{held} of this round's answers are held out as the validation set (the run has no --validation "
            "folder); they are never trained on"] if held else [])
        return result


def _labels_root(settings: RunSettings, folder) -> str | None:
    """The prefix answers files' paths take from `--labels-root` ('' for the pool folder); None: found per file."""
    if folder is None:
        return None
    folder = Path(folder).resolve()
    if folder == Path(settings.data.unlabelled).resolve():
        return ""
    for season in settings.data.season_list():
        if folder == season.folder.resolve():
            return season.prefix + "/"
    raise TrapkitError(f"--labels-root {folder} is neither the run's pool folder ({settings.data.unlabelled}) nor one "
                       "of its seasons; give the folder the answers' paths start from")


def _ingest_answers(run: Run, settings: RunSettings, state: RunState, df, label_files, allow_new_classes: bool,
                    n: int, labels_root: str | None, season) -> tuple[labels_mod.IngestReport, list[_InboxFile]]:
    """Read every answers file (each matched to the folder its paths start from), apply them to `df` (in
    memory: the round commits it), and return the report and the inbox files read."""
    current = labels_mod.selection_of(labels_mod.selected_items(run, state.round, df))
    if not run.request_path(state.round).is_file():  # only tells requested answers from extra ones
        log.warning("label request %s is missing; every answer is taken as an extra label",
                    run.request_path(state.round))
    known = set(df.loc[df["split"] == POOL, "path"])
    without, other_taxa = _pool_detections(settings) if settings.on_detections else (set(), [])
    prefixes = [""] + [s.prefix + "/" for s in settings.data.season_list()]
    prefer = season.prefix + "/" if season is not None else None

    # --labels files: relative to the folder `labels_root` names, else to the one folder they fit.
    groups = [labels_mod.Answered(_locate(read_answers(f), Path(f).name, known | without, prefixes, labels_root,
                                          prefer), current) for f in map(Path, label_files)]
    inbox = _read_inbox(run)
    for f in inbox:
        page = _PAGE_FILE.fullmatch(f.path.name)
        if page is None:  # a CSV dropped into the inbox: the one folder it fits
            groups.append(labels_mod.Answered(_locate(f.answers, f.path.name, known | without, prefixes, None, None),
                                              current))
            continue
        # A page file names items as the run does, and answers its own round's request (an image-level answer
        # labels what that round selected).
        asked = current if int(page.group(1)) == state.round else \
            labels_mod.selection_of(labels_mod.selected_items(run, int(page.group(1)), df))
        groups.append(labels_mod.Answered(f.answers, asked))
    vocabulary = labels_mod.Vocabulary.of(state.classes, run_taxonomy(run, state.classes, warn=False), other_taxa)
    report = labels_mod.ingest(df, groups, vocabulary, None, n, allow_new_classes, without_items=without)
    kill_point("ingested")
    return report, inbox


def _locate(answers: list, name: str, paths: set[str], prefixes: list[str], given: str | None,
            prefer: str | None) -> list:
    """`answers` with their paths made the run's: under the one folder (the pool '', or a season's prefix) all the
    file's images are in. `given`: the folder the user named; `prefer`: the season added with this file."""
    if not answers:
        return answers
    images = {a.path for a in answers}
    if given is not None:
        chosen = given
    else:
        fits = {p: sum(p + path in paths for path in images) for p in prefixes}
        full = [p for p in prefixes if fits[p] == len(images)]
        if prefer in full:
            chosen = prefer
        elif len(full) > 1:
            folders = ", ".join("the pool folder" if not p else f"the season {p[:-1]}" for p in full)
            raise TrapkitError(f"{name} names images that are in more than one folder of the run ({folders}); say "
                               "which folder its paths start from with --labels-root DIR")
        else:
            chosen = full[0] if full else max(prefixes, key=lambda p: fits[p])  # the rest is named as missing
    return [replace(a, path=chosen + a.path) for a in answers] if chosen else answers


def _read_inbox(run: Run) -> list[_InboxFile]:
    if not run.inbox_dir.is_dir():
        return []
    out = []
    with run.inbox_lock():
        for path in sorted(run.inbox_dir.glob("*.csv")):
            data = path.read_bytes()
            out.append(_InboxFile(path, hashlib.sha256(data).hexdigest(), read_answers(path, data)))
    return out


def _pool_detections(settings: RunSettings) -> tuple[set[str], list[str]]:
    """From the pool's and the seasons' detections files, read once: (images whose detections all fall below the
    threshold, as manifest paths; the names a classifier gave taxa above its classes)."""
    from trapkit.train.scan import detection_items

    data = settings.data
    sources = [(data.unlabelled, data.detections, "")]
    sources += [(str(s.folder), s.detections, s.prefix + "/") for s in data.season_list()]
    without, taxa = set(), []
    for folder, md, prefix in sources:
        if md:
            found = detection_items(folder, md, data.threshold, data.categories, "--detections", "--unlabelled")
            without |= {prefix + p for p in found.without}
            taxa += found.taxa
    return without, taxa


def _append(df, rows: list[dict], n: int):
    import pandas as pd

    return pd.concat([df, _frame(rows, added_round=n)], ignore_index=True)


def _rescan_pool(settings: RunSettings, df, n: int):
    """Append pool images not yet in the manifest (whole-image runs)."""
    from trapkit.train.scan import scan_pool

    if settings.on_detections:
        raise TrapkitError("--rescan finds new image files, but this run's items are detections; add a season "
                           "with --add-pool DIR --detections MD.json")
    known = set(df.loc[df["split"] == POOL, "path"])
    new = [p for p in scan_pool(settings.data.unlabelled) if p not in known]
    if new:
        log.info("rescan: %d new image(s) in the pool", len(new))
        df = _append(df, _rows(POOL, POOL_ROOT, new), n)
    return df


def _season_place(settings: RunSettings, df, folder: Path) -> tuple[str, str]:
    """(prefix, manifest root) of a new season: inside the pool folder, its path there and the pool's root;
    anywhere else (a link to a drive included), its folder's name, made unique in the run, and a root of its own."""
    pool = Path(settings.data.unlabelled).resolve()
    for season in settings.data.season_list():
        if season.folder.resolve() == folder.resolve():
            return season.prefix, season.root  # added before (a run that failed, given again): the same place
    try:
        inside = folder.resolve().relative_to(pool).as_posix()
    except ValueError:
        inside = None
    if inside not in (None, "."):
        return inside, POOL_ROOT
    taken = {p.split("/", 1)[0] for p in df.loc[df["split"] == POOL, "path"]}
    taken |= {s.prefix.split("/", 1)[0] for s in settings.data.season_list()}
    base = Path(os.path.abspath(folder)).name or "season"  # '..' spelled out; a link keeps its own name
    prefix, k = base, 2
    while prefix in taken:
        prefix, k = f"{base}-{k}", k + 1
    return prefix, SEASON_ROOT + prefix


def _add_season(settings: RunSettings, state: RunState, df, folder: Path, detections, n: int):
    """A new season joins the pool (in `df` and `settings`, committed with the round); returns (df, Season)."""
    if not folder.is_dir():
        raise TrapkitError(f"--add-pool folder {folder} does not exist; give the new season's image folder")
    if Path(settings.data.unlabelled).resolve() == folder.resolve():
        raise TrapkitError(f"--add-pool {folder} is the run's pool folder itself; give the new season's folder")
    if settings.on_detections and detections is None:
        raise TrapkitError("this run's items are MegaDetector detections: add the season's file with --add-pool "
                           f"{folder} --detections MD.json")
    if not settings.on_detections and detections is not None:
        raise TrapkitError("this run's items are whole images, so a detections file cannot join it; add the folder "
                           "alone, or start a run on detections ('al init --detections')")
    prefix, root = _season_place(settings, df, folder)
    rows, without, problems = _pool_rows(settings, str(folder), None if detections is None else str(detections),
                                         "--add-pool", prefix + "/", root)
    known = set(df.loc[df["split"] == POOL, "path"])
    fresh = [r for r in rows if r["path"] not in known]
    for p in problems:
        log.warning("%s", p)
    if len(fresh) < len(rows):
        log.info("--add-pool: %d item(s) of images already in the run left as they are", len(rows) - len(fresh))
    if fresh:
        df = _append(df, fresh, n)
    log.info("--add-pool: %d new item(s) from %s (named %s/... in the run)", len(fresh), folder, prefix)
    state.images_without_detections += len([p for p in without if p not in known])
    data = settings.data
    seasons = data.season_list()  # seasons an earlier trapkit added carry no prefix yet: write theirs down
    data.season_prefixes, data.season_roots = tuple(s.prefix for s in seasons), tuple(s.root for s in seasons)
    known = [i for i, s in enumerate(seasons) if s.folder.resolve() == folder.resolve()]
    if known:
        return df, seasons[known[0]]
    data.seasons += (os.path.abspath(folder),)
    data.season_detections += (str(Path(detections).resolve()) if detections is not None else "",)
    data.season_prefixes += (prefix,)
    data.season_roots += (root,)
    return df, data.season_list()[-1]


# -- one round ------------------------------------------------------------------------------

def model_name(run_dir: Path) -> str:
    """The name a run's models go by (Triton model, Hub repo, AddaxAI id): its folder's name, made a valid one."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(run_dir).absolute().name).strip("-._")
    return name or "trapkit-model"


def _spec(settings: RunSettings, classes, taxonomy: tuple[str, ...] | None = None,
          name: str = "trapkit-model") -> ModelSpec:
    """The round's model spec; the crop policy it was trained with travels in it (classify's defaults)."""
    from trapkit.train.backbones import backbone_preprocessing

    pre = backbone_preprocessing(settings.model.backbone, settings.model.weights)
    return ModelSpec(arch=settings.model.backbone, labels=tuple(classes), feat_dim=settings.model.feat_dim,
                     head_hidden=settings.model.head_hidden, input_size=settings.model.input_size,
                     resize_mode=settings.model.resize_mode, interpolation=settings.model.interpolation,
                     crop_margin=settings.model.crop_margin, detection_threshold=settings.data.threshold,
                     detection_categories=settings.data.categories, mean=pre.mean, std=pre.std,
                     name=name, taxonomy=taxonomy)


# What an embedder's weights were trained as: stored in their safetensors metadata, checked on load.
_EMBEDDER_KEYS = ("arch", "feat_dim", "l2_normalize", "input_size")


def _embedder_metadata(spec: ModelSpec) -> dict[str, str]:
    return {"trapkit": "embedder", "format_version": "1"} | {k: str(getattr(spec, k)) for k in _EMBEDDER_KEYS}


def _save_embedder(run: Run, model, version: str) -> None:
    from safetensors.torch import save

    state_dict = {k: v.detach().contiguous() for k, v in model.embedder.state_dict().items()}
    atomic_write_bytes(run.embedder_path(version), save(state_dict, metadata=_embedder_metadata(model.spec)))


def _load_embedder(run: Run, model, version: str | None) -> None:
    """Load a fine-tuned embedder, after checking it was trained as the run's settings build it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not version or version == BASE_EMBEDDER:
        return
    path = run.embedder_path(version)
    advice = "put settings.json back as it was when the run started, or start a new run"
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state_dict = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise TrapkitError(f"cannot read the embedder weights {path} ({e.__class__.__name__}); the run folder is "
                           "damaged: restore it, or start a new run") from None
    expected = _embedder_metadata(model.spec)
    differ = [f"{k} {meta[k]} (settings: {expected[k]})" for k in _EMBEDDER_KEYS if k in meta and meta[k] != expected[k]]
    if differ:
        raise TrapkitError(f"{path} was trained with other model settings: {', '.join(differ)}; {advice}")
    try:
        model.embedder.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[-1].strip()[:120]
        raise TrapkitError(f"{path} does not fit the model the run's settings build ({first}); {advice}") from None


def _labels_of(df, rows: np.ndarray, classes) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in df["label"].to_numpy()[rows]], dtype=np.int64)


@dataclass
class _Round:
    """What one round works on, built up as it goes."""

    run: Run
    settings: RunSettings
    state: RunState
    df: object  # the manifest (pandas DataFrame)
    n: int
    items: list[Item]
    classes: tuple[str, ...]
    emb: np.ndarray | None = None  # (N, D) float16, row i = manifest row i
    probs: np.ndarray | None = None  # (N, C) float32
    trained: np.ndarray | None = None  # rows the head learned from
    recall: np.ndarray | None = None  # (C,) validation recall per class, NaN where not measured
    per_class: dict = field(default_factory=dict)  # what the round knows per class (`_class_table`)
    cluster: object = None  # trapkit.cluster.ClusterSettings: the items are embedded on that Ray cluster


def _run_round(run: Run, settings: RunSettings, state: RunState, df, n: int, cluster=None,
               ingested: dict[str, str] | None = None) -> RoundResult:
    """One round (module docstring), committed as one transaction; `ingested`: the inbox files it read
    ({name in the inbox: sha256}), moved to inbox/done/ once it commits."""
    import torch

    from trapkit.train import head, semi
    from trapkit.train.model import build_model, save_model

    classes = tuple(state.classes)
    cold = not settings.data.labelled and not trained_mask(df).any()  # no seed, no label yet: trapkit.train.cold_start
    torch.manual_seed(settings.select.seed)
    run.stage()
    model = build_model(_spec(settings, classes or (cold_start.PLACEHOLDER_CLASS,), run_taxonomy(run, classes),
                              model_name(run.root)),
                        settings.model.weights if state.embedder_version in (None, BASE_EMBEDDER) else "none")
    _load_embedder(run, model, state.embedder_version)
    r = _Round(run, settings, state, df, n, run.items(df, settings), classes, cluster=cluster)
    version = BASE_EMBEDDER if cold else _finetune_if_due(r, model)
    kill_point("finetuned")
    r.emb = _embed_all(r, model, version)
    kill_point("embedded")

    # Head on the labelled embeddings; with `head.warm_start`, started from the last round's (grown for new
    # classes) while the embedder is unchanged.
    r.trained = np.flatnonzero(trained_mask(df))
    if not len(r.trained) and not cold:
        raise TrapkitError("no readable labelled images; check the --labelled folder")
    y = _labels_of(df, r.trained, classes)
    if cold:
        r.probs, m = np.ones((len(df), 1), np.float32), dict(cold_start.NOT_MEASURED)
    else:
        init = None
        if settings.head.warm_start and version == state.embedder_version and (run.model_dir / "spec.json").is_file():
            from trapkit.train.model import load_model

            init = load_model(run.model_dir).head
        model.head = semi.fit_round_head(r.emb, r.trained, y, np.flatnonzero(_candidate_mask(df)), len(classes),
                                         settings.model.head_hidden, settings.head, seed=settings.select.seed + n,
                                         init=init)
        save_model(run.staged_model_dir, model)
        r.probs = head.predict(model.head, r.emb)  # (N, C)
        m = _evaluate(r)
        r.recall = np.array([m["per_class_recall"].get(c, np.nan) for c in classes])
    kill_point("model-saved")

    chosen = _request(r, np.bincount(y, minlength=len(classes)))
    settings.save(run.round_dir(n) / "settings.json")
    kill_point("request-written")

    # Commit manifest, settings, model and state together (older embedder versions go then).
    state.round, state.embedder_version, state.labels_at_round = n, version, int(len(r.trained))
    run.commit(df, settings, state, ingested)
    log.debug("round %d: %d labels, validation accuracy %s (%d items); requested %d items in %s",
              n, len(r.trained), m["accuracy"], m["n"], len(chosen), run.request_path(n))
    return RoundResult(n, run.request_path(n), int(len(chosen)), int(len(r.trained)), m, per_class=r.per_class)


def _finetune_if_due(r: _Round, model) -> str:
    """Finetune on the seed, and again once `finetune.every` new labels arrived. Returns the embedder version."""
    from trapkit.train import finetune

    settings, state = r.settings, r.state
    trained = np.flatnonzero(trained_mask(r.df))
    # Never finetuned yet (the seed's round, or the first answers of a run started without a seed), or due again.
    due = state.embedder_version in (None, BASE_EMBEDDER) or \
        len(trained) - state.labels_at_finetune >= settings.finetune.every
    if not due or settings.finetune.epochs <= 0:
        return state.embedder_version or BASE_EMBEDDER
    finetune.finetune(model, [r.items[i] for i in trained], _labels_of(r.df, trained, r.classes), len(r.classes),
                      settings.finetune, seed=settings.select.seed + r.n)
    version = f"r{r.n:03d}"
    r.run.embeddings_path(version).unlink(missing_ok=True)  # left by an attempt killed after its finetune
    _save_embedder(r.run, model, version)
    state.labels_at_finetune = len(trained)
    return version


def _embed_all(r: _Round, model, version: str) -> np.ndarray:
    """(N, D) float16 memmap for every manifest row; unreadable images are recorded in the manifest, never
    fatal, and the images' EXIF times are stored for sequences."""
    from trapkit.train import embed

    df, path = r.df, r.run.embeddings_path(version)
    cached = embed.open_embeddings(path) if path.is_file() else None
    # Rows the last committed round embedded with this embedder; rows past them may come from a round that
    # was killed before it committed, and are embedded again.
    committed = int((df["added_round"] < r.n).sum()) if version == r.state.embedder_version else 0
    if cached is None or len(cached) != len(df) or committed < len(df):
        reuse = cached[:min(committed, len(cached))] if cached is not None else None
        result = embed.extract(model, r.items, path, skip=(df["status"] != OK).to_numpy(), reuse=reuse,
                               cluster=r.cluster)
        for i, reason in result.failures.items():
            df.at[i, "status"], df.at[i, "reason"] = UNREADABLE, reason
        for i, taken in result.times.items():
            df.at[i, "time"] = taken
        if result.failures:
            log.warning("%d unreadable item(s) recorded in %s", len(result.failures), r.run.manifest_path)
    return embed.open_embeddings(path)


def _evaluate(r: _Round) -> dict:
    """Metrics on the held-out validation set (never the pool) into rounds/NNN/ and model/metrics.json."""
    from trapkit.train import metrics

    df, classes = r.df, list(r.classes)
    val = np.flatnonzero(((df["split"] == VALIDATION) & (df["status"] == OK)).to_numpy())
    val = val[np.isin(df["label"].to_numpy()[val], classes)]
    m = metrics.compute(_labels_of(df, val, classes), r.probs[val].argmax(axis=1), classes)
    metrics.write(r.run.round_dir(r.n), m | {"round": r.n, "labelled": int(len(r.trained))}, classes)
    card = {k: m[k] for k in ("accuracy", "macro_precision", "macro_recall", "micro_precision", "micro_recall",
                              "per_class_recall", "per_class_precision")}
    # One meaning per key, in both metrics files: `labelled` counts the items trained on.
    atomic_write_json(r.run.staged_model_dir / "metrics.json",
                      {"format_version": METRICS_FORMAT_VERSION, "round": r.n, "labelled": int(len(r.trained)),
                       **card, "validation_images": int(len(val))})
    return m


def _sequences(r: _Round) -> np.ndarray:
    """(N,) sequence id of every row (-1 outside the pool): same folder, EXIF times within the gap
    (`trapkit.sequences`, the grouping `classify --smooth` uses). An image's detections share its sequence."""
    from trapkit.sequences import sequence_ids

    df = r.df
    pool = np.flatnonzero((df["split"] == POOL).to_numpy())
    paths, times = df["path"].to_numpy()[pool], df["time"].to_numpy()[pool]
    first = {}
    for p, t in zip(paths, times):
        first.setdefault(p, t)
    images = list(first)
    ids = dict(zip(images, sequence_ids(images, [first[p] or None for p in images], r.settings.select.sequence_gap)))
    out = np.full(len(df), -1, np.int64)
    out[pool] = [ids[p] for p in paths]
    return out


def _pick(r: _Round, candidates: np.ndarray, taken: np.ndarray, k: int, counts: np.ndarray,
          sequence: np.ndarray | None) -> np.ndarray:
    from trapkit.train import strategies

    pool = strategies.Pool(r.probs, r.emb, candidates, r.trained, counts, _labels_of(r.df, r.trained, r.classes),
                           r.recall)
    strategy = r.settings.select.strategy if len(r.trained) else r.settings.select.first_strategy
    if sequence is None:
        return strategies.select(strategy, pool, k, seed=r.settings.select.seed + r.n)
    return strategies.select_per_sequence(strategy, pool, k, sequence, taken=taken, seed=r.settings.select.seed + r.n)


def _request(r: _Round, counts: np.ndarray) -> np.ndarray:
    """Select and write request n. Unanswered items of the last request stay requested; new picks fill the batch;
    items whose image is gone are marked unreadable and replaced."""
    from trapkit.train import strategies

    run, df, n, batch = r.run, r.df, r.n, r.settings.select.batch
    candidates = np.flatnonzero(_candidate_mask(df))
    paths, detections = df["path"].to_numpy(), df["detection"].to_numpy()
    sequence = _sequences(r)
    carried = np.zeros(0, np.int64)
    if n > 1:
        previous = {(g.path, "" if g.detection is None else str(g.detection))
                    for g in labels_mod.selected_items(run, n - 1, df)}
        carried = np.array([i for i in candidates if (paths[i], detections[i]) in previous], np.int64)
        if len(carried) > batch:  # --batch was lowered: keep the most uncertain unanswered items
            carried = carried[np.argsort(strategies.margin_scores(r.probs[carried]), kind="stable")]
            carried = np.sort(carried[:batch])
    carried = _present(r, carried)
    chosen = carried
    per_sequence = sequence if r.settings.sequence_aware else None
    while len(chosen) < batch:
        rest = np.setdiff1d(np.flatnonzero(_candidate_mask(df)), chosen)
        if not len(rest):
            break
        picked = _present(r, _pick(r, rest, chosen, batch - len(chosen), counts, per_sequence))
        chosen = np.concatenate([chosen, picked])
    candidates = np.flatnonzero(_candidate_mask(df))
    images = list(dict.fromkeys(paths[candidates].tolist()))  # one request row per image, manifest order
    labels_mod.write_request(run.request_path(n), images, set(paths[chosen].tolist()))
    guesses = [_guess(r, i) for i in chosen]
    labels_mod.write_guesses(run.guesses_path(n), guesses)
    labels_mod.write_choices(run.choices_path(n), r.classes)
    if r.settings.on_detections:
        detector = {(paths[i], int(detections[i])): (df.at[i, "conf"], df.at[i, "category"]) for i in chosen
                    if detections[i]}
        labels_mod.write_round_detections(run.round_detections_path(n), guesses, detector, r.classes)
    atomic_write_json(run.round_dir(n) / "request.json", {
        "format_version": REQUEST_FORMAT_VERSION, "items": int(len(chosen)),
        "images": len(set(paths[chosen].tolist())), "sequences": len(set(sequence[chosen].tolist())),
        "per_sequence": r.settings.sequence_aware, "per_class": _class_table(r, counts, candidates, chosen)})
    return chosen


def _class_table(r: _Round, counts: np.ndarray, candidates: np.ndarray, chosen: np.ndarray) -> dict:
    """Per class (kept in r.per_class): labels, validation recall, pool items the model gives it, and requested
    items it gives it."""
    from trapkit.train.metrics import class_table

    recall = {} if r.recall is None else {c: float(v) for c, v in zip(r.classes, r.recall) if v == v}
    predicted = (None, None) if not len(r.trained) else (  # no model yet
        np.bincount(r.probs[candidates].argmax(1), minlength=len(r.classes)),
        np.bincount(r.probs[chosen].argmax(1), minlength=len(r.classes)))
    r.per_class = class_table(r.classes, counts, recall, *predicted)
    return r.per_class


def _present(r: _Round, rows: np.ndarray) -> np.ndarray:
    """`rows` whose image file is still there; the others are marked unreadable (never asked about again)."""
    missing = [i for i in rows if not r.items[i].path.is_file()]
    if not missing:
        return rows
    from trapkit.images import FAILURE_MISSING

    for i in missing:
        r.df.at[i, "status"], r.df.at[i, "reason"] = UNREADABLE, f"{FAILURE_MISSING}: {r.items[i].path}"
    log.warning("%d pool image(s) were deleted since they were embedded; recorded as unreadable", len(missing))
    return np.setdiff1d(rows, missing)


def _guess(r: _Round, i: int) -> labels_mod.Guess:
    """The model's guess for row i; a season's first round shows the classifier's guess from its file."""
    df = r.df
    detection, box = df.at[i, "detection"], df.at[i, "bbox"]
    if df.at[i, "prior_guess"] and df.at[i, "added_round"] == r.n:
        guess, conf = df.at[i, "prior_guess"], float(df.at[i, "prior_confidence"] or "nan")
    elif not len(r.trained):  # no model yet
        guess, conf = None, float("nan")
    else:
        guess, conf = r.classes[int(r.probs[i].argmax())], float(r.probs[i].max())
    return labels_mod.Guess(df.at[i, "path"], int(detection) if detection else None,
                            tuple(float(v) for v in box.split()) if box else None, guess,
                            None if conf != conf else conf)


# -- status ---------------------------------------------------------------------------------

def status(run_dir: str | Path) -> dict:
    """Labels per class, rounds, latest metrics, and what to do next."""
    from trapkit.typed_json import read_versioned

    run = Run(run_dir)
    run.require()
    with run.logging("al status"):
        state = run.load_state()
        df = run.load_manifest()
        lab = df[trained_mask(df)]
        per_class = {c: int((lab["label"] == c).sum()) for c in head_classes(state.classes, df)}
        pool = df[df["split"] == POOL]
        advice = "the run folder is damaged; rerun 'trapkit al next' to write it again"

        def read(path: Path, version: int = METRICS_FORMAT_VERSION) -> dict:
            return read_versioned(path, version, "round file", advice) if path.is_file() else {}

        latest = read(run.round_dir(state.round) / "metrics.json")
        latest_request = read(run.round_dir(state.round) / "request.json", REQUEST_FORMAT_VERSION)
        inbox = sorted(p.name for p in run.inbox_dir.glob("*.csv")) if run.inbox_dir.is_dir() else []
        request = run.request_path(state.round)
        history = []
        for n in range(1, state.round + 1):
            d = read(run.round_dir(n) / "metrics.json")
            asked = read(run.round_dir(n) / "request.json", REQUEST_FORMAT_VERSION)
            if d:
                history.append({"round": n, "labelled": d.get("labelled"), "accuracy": d.get("accuracy"),
                                "asked": asked.get("items"), "asked_sequences": asked.get("sequences")})
        if state.round == 0:
            todo = "'trapkit al init' did not finish; run it again with the same options"
        elif inbox:
            todo = f"answers waiting in {run.inbox_dir}: run 'trapkit al next {run.root}'"
        else:
            todo = (f"label the Selected rows of {request} (Species column), then 'trapkit al next {run.root} "
                    "--labels FILE'")
        return {
            "round": state.round,
            "labels_per_class": per_class,
            # labels, validation recall, pool items the model gives it, and of the latest request (metrics.class_table)
            "per_class": latest_request.get("per_class", {}),
            "labelled": int(len(lab)),
            "wrong_boxes": int((df["label"] == WRONG_BOX).sum()),
            "taxa": {str(k): int(v) for k, v in df.loc[df["taxon"] != "", "taxon"].value_counts().items()},
            "pool_unlabelled": int(((pool["label"] == "") & (pool["status"] == OK)).sum()),
            "pool_images_without_detections": state.images_without_detections,
            "unreadable": int((df["status"] != OK).sum()),
            "validation_images": int((df["split"] == VALIDATION).sum()),
            "metrics": {k: latest.get(k) for k in ("accuracy", "macro_precision", "macro_recall") if k in latest},
            "request": str(request),
            "inbox": inbox,
            "next": todo,
            "history": history,
            "stopping": stopping_hint(history),
            "problems": list(state.scan_problems),
        }


def stopping_hint(history: list[dict], rounds: int = 3, min_gain: float = 0.01) -> str | None:
    """A plain-words stopping signal: validation accuracy gained < 1 point over the last 3 rounds."""
    if len(history) <= rounds or any(h["accuracy"] is None for h in history[-rounds - 1:]):
        return None
    gain = max(h["accuracy"] for h in history[-rounds:]) - history[-rounds - 1]["accuracy"]
    if gain >= min_gain:
        return None
    return (f"validation accuracy changed by {100 * gain:+.1f} points over the last {rounds} rounds (under "
            f"{100 * min_gain:.0f} gained): it has levelled off, so more labels of this kind may not pay; consider "
            "stopping, or adding classes or validation images")


# -- simulate -------------------------------------------------------------------------------

CURVE_COLUMNS = ("labels", "accuracy", "macro_recall", "strategy", "seed")


def simulate(out: str | Path, settings: RunSettings, oracle: str | Path, budget: int,
             allow_new_classes: bool = False) -> list[dict]:
    """The loop with a CSV of true labels answering each request, until `budget` pool labels; writes curve.csv/png.

    The oracle answers per image (`File, RelativePath, Species`: every selected detection of the image) or
    per detection (with `Detection`); a detection's own row wins over its image's.
    """
    truth = {a.key: a.species for a in read_answers(oracle)}
    run = Run(out)
    if run.state_path.is_file() and run.load_state().round > 0:
        raise TrapkitError(f"{run.root} already holds a run; give --out a new folder")
    result = init_run(out, settings)
    curve = [_curve_row(result, settings)]
    _write_curve(run, curve)
    spent = 0
    while spent < budget and result.requested:
        items = labels_mod.current_request(out)
        answers = {it.key: truth.get(it.key) or truth.get((it.path, None)) for it in items}
        missing = [f"{p}" + ("" if d is None else f" detection {d}") for (p, d), s in answers.items() if not s]
        if missing:
            raise TrapkitError(f"--oracle has no label for {len(missing)} requested item(s), e.g. {missing[:3]}")
        take = dict(list(answers.items())[: budget - spent])
        labels_mod.save_answers(out, take, allow_new_classes=True)
        spent += len(take)
        result = next_round(out, allow_new_classes=allow_new_classes)
        curve.append(_curve_row(result, settings))
        _write_curve(run, curve)
    return curve


def _curve_row(result: RoundResult, settings: RunSettings) -> dict:
    return {"labels": result.labels, "accuracy": result.metrics["accuracy"],
            "macro_recall": result.metrics["macro_recall"], "strategy": settings.select.strategy,
            "seed": settings.select.seed}


def _write_curve(run: Run, curve: list[dict]) -> None:
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"  # empty: not measured (no validation images)

    lines = [",".join(CURVE_COLUMNS)] + [
        f"{r['labels']},{cell(r['accuracy'])},{cell(r['macro_recall'])},{r['strategy']},{r['seed']}" for r in curve]
    atomic_write_text(run.root / "curve.csv", "\n".join(lines) + "\n")
    atomic_write_bytes(run.root / "curve.png", curve_png({f"{curve[0]['strategy']} (seed {curve[0]['seed']})": curve}))


def curve_png(curves: dict[str, list[dict]]) -> bytes:
    """Validation accuracy against labels, one line per named curve."""
    from trapkit.figures import figure_png, new_figure

    fig = new_figure(6, 4)
    ax = fig.subplots()
    for name, rows in curves.items():
        accuracy = [float("nan") if r["accuracy"] is None else r["accuracy"] for r in rows]  # NaN: not drawn
        ax.plot([r["labels"] for r in rows], accuracy, marker="o", markersize=3, label=name)
    ax.set_xlabel("labelled items")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure_png(fig, dpi=90)
