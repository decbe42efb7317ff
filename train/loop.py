"""The active-learning loop: `init`, `next`, `status`, `simulate`. Each call does one step and returns.

A round: (finetune the embedder when enough new labels arrived) -> embed
every image (cached per embedder version) -> fit the head -> save the
deployable model -> evaluate on the validation set -> select -> write the
label request -> commit `state.json`. See `trapkit.train.run` for the files
and why a kill at any point loses no ingested label.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trapkit.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.spec import ModelSpec
from trapkit.taxonomy import read_taxonomy_csv
from trapkit.train import labels as labels_mod
from trapkit.train.run import Run, RunState
from trapkit.train.settings import RunSettings

log = logging.getLogger(__name__)

KILL_ENV = "TRAPKIT_TEST_KILL_AT"
BASE_EMBEDDER = "base"


def _stage(name: str) -> None:
    """Test-only crash hook: with TRAPKIT_TEST_KILL_AT=<name> the process SIGKILLs itself here.

    Stages: ingested, inbox-moved, finetuned, embedded, model-saved, request-written.
    """
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RoundResult:
    round: int
    request: Path
    requested: int
    labels: int
    metrics: dict
    ingest: labels_mod.IngestReport | None = None
    problems: list[str] = field(default_factory=list)


# -- init ---------------------------------------------------------------------------------

def init_run(run_dir: str | Path, settings: RunSettings, taxonomy: str | Path | None = None,
             cluster=None) -> RoundResult:
    """Scan the trees, write manifest and settings, and run round 1.

    `cluster` (`trapkit.cluster.ClusterSettings`): embed the images on that Ray cluster.

    `taxonomy`: a `label,taxonomy` CSV with one row per seed class (`trapkit.taxonomy`); it is
    copied to RUN/taxonomy.csv and every round's model spec carries its strings.
    """
    import pandas as pd

    from trapkit.train.backbones import backbone_preprocessing
    from trapkit.train.scan import scan_labelled, scan_pool

    run = Run(run_dir)
    if run.state_path.is_file() and run.load_state().round > 0:
        raise TrapkitError(f"{run.root} already holds a run; continue it with 'trapkit al next {run.root}', "
                           "or pick a new folder")
    if not settings.data.labelled or not settings.data.unlabelled:
        raise TrapkitError("give both --labelled (one folder per class) and --unlabelled (the pool)")
    seed_tree = scan_labelled(settings.data.labelled)
    strings = read_taxonomy_csv(taxonomy, sorted(seed_tree.classes)) if taxonomy is not None else None
    pool_paths = scan_pool(settings.data.unlabelled)
    problems = list(seed_tree.problems)
    rows = []
    rng = np.random.default_rng(settings.select.seed)
    if settings.data.validation:
        val_tree = scan_labelled(settings.data.validation, "--validation")
        problems += val_tree.problems
        extra = sorted(set(val_tree.classes) - set(seed_tree.classes))
        if extra:
            raise TrapkitError(f"--validation has classes the seed lacks ({', '.join(extra)}); add seed images "
                               "for them or remove them from the validation folder")
        held = set()
        rows += [("validation", "validation", p, c) for p, c in val_tree.items]
    else:
        held = _stratified_holdout(seed_tree.items, settings.data.validation_fraction, rng)
        rows += [("validation", "labelled", p, c) for p, c in seed_tree.items if p in held]
        if not held:
            problems.append("no validation folder and the seed is too small to hold images out; "
                            "metrics are not measured (give --validation)")
    rows += [("seed", "labelled", p, c) for p, c in seed_tree.items if p not in held]
    rows += [("pool", "unlabelled", p, "") for p in pool_paths]
    df = pd.DataFrame(rows, columns=["split", "root", "path", "label"])
    df["label_round"] = np.where(df["split"] == "pool", -1, 0)
    df["status"], df["reason"] = "ok", ""
    if settings.model.input_size is None:
        settings.model.input_size = backbone_preprocessing(settings.model.backbone, settings.model.weights).input_size
    run.root.mkdir(parents=True, exist_ok=True)
    if strings is not None:
        _write_taxonomy(run.taxonomy_path, sorted(seed_tree.classes), strings)
    settings.save(run.settings_path)
    run.save_manifest(df)
    state = RunState(round=0, classes=sorted(seed_tree.classes), scan_problems=problems)
    run.save_state(state)
    log.info("run %s: %d seed images in %d classes, %d validation, %d in the pool", run.root,
             int((df["split"] == "seed").sum()), len(state.classes), int((df["split"] == "validation").sum()),
             len(pool_paths))
    result = _run_round(run, settings, state, df, 1, cluster)
    result.problems = problems
    return result


def _stratified_holdout(items: list[tuple[str, str]], fraction: float, rng: np.random.Generator) -> set[str]:
    """Paths held out for validation: `fraction` of each class with 3+ images (at least one kept for training)."""
    held: set[str] = set()
    by_class: dict[str, list[str]] = {}
    for p, c in items:
        by_class.setdefault(c, []).append(p)
    for c, paths in sorted(by_class.items()):
        k = min(int(round(len(paths) * fraction)), len(paths) - 1) if len(paths) >= 3 else 0
        held.update(rng.choice(paths, size=k, replace=False).tolist() if k else [])
    return held


# -- next ---------------------------------------------------------------------------------

def next_round(run_dir: str | Path, label_files: list[str | Path] = (), flags: dict | None = None,
               allow_new_classes: bool = False, rescan: bool = False, cluster=None) -> RoundResult:
    """Ingest answers (files given and RUN/inbox/*.csv), then run the next round.

    `rescan` adds images that appeared in the pool folder since the last scan; `cluster`: as for `init_run`.
    """
    from trapkit.train.settings import resolve

    run = Run(run_dir)
    state = run.load_state()
    if state.round == 0:
        raise TrapkitError(f"'trapkit al init' did not finish for {run.root}; run it again with the same options")
    settings = resolve(flags=flags, base=run.settings())
    settings.save(run.settings_path)
    df = run.load_manifest()
    added = _rescan_pool(run, settings, df) if rescan else 0
    if added:
        df = run.load_manifest()
    classes = _classes(state, df)
    inbox = sorted(run.inbox_dir.glob("*.csv")) if run.inbox_dir.is_dir() else []
    answers = []
    for f in [*map(Path, label_files), *inbox]:
        answers += labels_mod.read_answers(f)
    request, requested = run.request_path(state.round), set()
    if request.is_file():
        _, requested = labels_mod.read_request(request)
    else:  # only used to tell requested answers from extra ones, so a moved request costs nothing
        log.warning("label request %s is missing; every answer is taken as an extra label", request)
    report = labels_mod.ingest(df, answers, classes, requested, state.round + 1, allow_new_classes)
    if report.new or report.corrected:
        run.save_manifest(df)
    _stage("ingested")
    for f in inbox:
        _move_to_done(f)
    _stage("inbox-moved")
    # Labels ingested for this round (now, or by an attempt that was killed) carry label_round > round.
    pending = bool((df["label_round"] > state.round).any())
    if not pending and not added:
        raise TrapkitError(
            f"no new labels; fill the Species column of {run.request_path(state.round)} and pass it with "
            f"--labels, or save answers into {run.inbox_dir}/"
        )
    log.debug("answers: %s", report.summary())
    state.classes = classes
    result = _run_round(run, settings, state, df, state.round + 1, cluster)
    result.ingest = report
    return result


def _move_to_done(path: Path) -> None:
    done = path.parent / "done"
    done.mkdir(exist_ok=True)
    target, k = done / path.name, 1
    while target.exists():
        target, k = done / f"{path.stem}-{k}{path.suffix}", k + 1
    os.replace(path, target)


def _rescan_pool(run: Run, settings: RunSettings, df) -> int:
    """Append pool images not yet in the manifest; returns how many."""
    import pandas as pd

    from trapkit.train.scan import scan_pool

    known = set(df.loc[df["split"] == "pool", "path"])
    new = [p for p in scan_pool(settings.data.unlabelled) if p not in known]
    if new:
        rows = pd.DataFrame({"split": "pool", "root": "unlabelled", "path": new, "label": "", "label_round": -1,
                             "status": "ok", "reason": ""})
        run.save_manifest(pd.concat([df, rows], ignore_index=True))
        log.info("rescan: %d new image(s) in the pool", len(new))
    return len(new)


def _classes(state: RunState, df) -> list[str]:
    """Head order: committed classes, then classes ingested by a round that did not finish (sorted)."""
    seen = set(df.loc[df["label"] != "", "label"].unique())
    return list(state.classes) + sorted(seen - set(state.classes))


def _labelled_mask(df) -> np.ndarray:
    return ((df["split"] != "validation") & (df["label"] != "") & (df["status"] == "ok")).to_numpy()


# -- one round ------------------------------------------------------------------------------

def _spec(settings: RunSettings, classes: list[str], taxonomy: tuple[str, ...] | None = None) -> ModelSpec:
    from trapkit.train.backbones import backbone_preprocessing

    pre = backbone_preprocessing(settings.model.backbone, settings.model.weights)
    return ModelSpec(arch=settings.model.backbone, labels=tuple(classes), feat_dim=settings.model.feat_dim,
                     head_hidden=settings.model.head_hidden, input_size=settings.model.input_size,
                     resize_mode=settings.model.resize_mode, mean=pre.mean, std=pre.std, name="trapkit-al-model",
                     taxonomy=taxonomy)


def _write_taxonomy(path: Path, classes: list[str], strings) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("label", "taxonomy"))
    writer.writerows(zip(classes, strings))
    atomic_write_text(path, buf.getvalue())


def _run_taxonomy(run: Run, classes: list[str]) -> tuple[str, ...] | None:
    """The run's taxonomy strings for `classes` (RUN/taxonomy.csv), None without one.

    A class added by a later round needs a row there; rows for classes not seen yet are kept for later.
    """
    if not run.taxonomy_path.is_file():
        return None
    return read_taxonomy_csv(run.taxonomy_path, classes, other_labels_ok=True)


def _load_embedder(run: Run, model, version: str | None) -> None:
    from safetensors.torch import load_file

    if version and version != BASE_EMBEDDER:
        model.embedder.load_state_dict(load_file(str(run.embedder_dir / f"{version}.safetensors")), strict=True)


def _labels_of(df, rows: np.ndarray, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in df["label"].to_numpy()[rows]], dtype=np.int64)


def _run_round(run: Run, settings: RunSettings, state: RunState, df, n: int, cluster=None) -> RoundResult:
    import torch

    from trapkit.train import head
    from trapkit.train.model import build_model, save_model

    classes = list(state.classes)
    torch.manual_seed(settings.select.seed)
    model = build_model(_spec(settings, classes, _run_taxonomy(run, classes)),
                        settings.model.weights if state.embedder_version in (None, BASE_EMBEDDER) else "none")
    _load_embedder(run, model, state.embedder_version)
    paths = run.image_paths(df, settings)
    version = _finetune_if_due(run, settings, state, df, model, paths, n)
    _stage("finetuned")
    emb = _embed_all(run, df, model, paths, version, cluster)
    _stage("embedded")

    # Head on the labelled embeddings; warm start (grown for new classes) while the embedder is unchanged.
    labelled = np.flatnonzero(_labelled_mask(df))
    if not len(labelled):
        raise TrapkitError("no readable labelled images; check the --labelled folder")
    y = _labels_of(df, labelled, classes)
    init = None
    if version == state.embedder_version and (run.model_dir / "spec.json").is_file():
        from trapkit.train.model import load_model

        init = load_model(run.model_dir).head
    model.head = head.fit_head(emb[labelled], y, len(classes), settings.model.head_hidden, settings.head,
                               seed=settings.select.seed + n, init=init)
    save_model(run.model_dir, model)
    probs = head.predict(model.head, emb)  # (N, C)
    m = _evaluate(run, df, probs, classes, n, len(labelled))
    _stage("model-saved")

    chosen = _request(run, settings, df, probs, emb, labelled, np.bincount(y, minlength=len(classes)), classes, n)
    settings.save(run.round_dir(n) / "settings.json")
    _stage("request-written")

    # Commit, then drop caches of older embedder versions.
    state.round, state.embedder_version, state.labels_at_round = n, version, int(len(labelled))
    run.save_state(state)
    for old in [*run.embeddings_dir.glob("*.npy"), *run.embedder_dir.glob("*.safetensors")]:
        if old.stem != version:
            old.unlink(missing_ok=True)
    log.debug("round %d: %d labels, validation accuracy %s (%d images); requested %d images in %s",
             n, len(labelled), m["accuracy"], m["n"], len(chosen), run.request_path(n))
    return RoundResult(n, run.request_path(n), int(len(chosen)), int(len(labelled)), m)


def _finetune_if_due(run: Run, settings: RunSettings, state: RunState, df, model, paths, n: int) -> str:
    """Finetune on the seed, and again once `finetune.every` new labels arrived. Returns the embedder version."""
    from safetensors.torch import save

    from trapkit.train import finetune

    labelled = np.flatnonzero(_labelled_mask(df))
    due = state.embedder_version is None or len(labelled) - state.labels_at_finetune >= settings.finetune.every
    if not due or settings.finetune.epochs <= 0:
        return state.embedder_version or BASE_EMBEDDER
    finetune.finetune(model, [paths[i] for i in labelled], _labels_of(df, labelled, list(state.classes)),
                      len(state.classes), settings.finetune, seed=settings.select.seed + n)
    version = f"r{n:03d}"
    run.embeddings_path(version).unlink(missing_ok=True)  # left by an attempt killed after its finetune
    state_dict = {k: v.detach().contiguous() for k, v in model.embedder.state_dict().items()}
    atomic_write_bytes(run.embedder_dir / f"{version}.safetensors", save(state_dict))
    state.labels_at_finetune = len(labelled)
    return version


def _embed_all(run: Run, df, model, paths, version: str, cluster=None) -> np.ndarray:
    """(N, D) float16 memmap for every manifest row; unreadable images are recorded in the manifest, never fatal."""
    from trapkit.train import embed

    path = run.embeddings_path(version)
    cached = embed.open_embeddings(path) if path.is_file() else None
    if cached is None or len(cached) != len(df):
        failures = embed.extract(model, paths, path, skip=(df["status"] != "ok").to_numpy(), reuse=cached,
                                 cluster=cluster)
        for i, reason in failures.items():
            df.at[i, "status"], df.at[i, "reason"] = "unreadable", reason
        if failures:
            run.save_manifest(df)
            log.warning("%d unreadable image(s) recorded in %s", len(failures), run.manifest_path)
    return embed.open_embeddings(path)


def _evaluate(run: Run, df, probs: np.ndarray, classes: list[str], n: int, n_labelled: int) -> dict:
    """Metrics on the held-out validation set (never the pool) into rounds/NNN/ and model/metrics.json."""
    from trapkit.train import metrics

    val = np.flatnonzero(((df["split"] == "validation") & (df["status"] == "ok")).to_numpy())
    val = val[np.isin(df["label"].to_numpy()[val], classes)]
    m = metrics.compute(_labels_of(df, val, classes), probs[val].argmax(axis=1), classes)
    metrics.write(run.round_dir(n), m | {"round": n, "labelled": n_labelled}, classes)
    card = {k: m[k] for k in ("accuracy", "macro_precision", "macro_recall", "micro_precision", "micro_recall",
                              "per_class_recall")}
    atomic_write_json(run.model_dir / "metrics.json",
                      {"round": n, "labels": n_labelled, **card, "validation_images": int(len(val))})
    return m


def _request(run: Run, settings: RunSettings, df, probs, emb, labelled, counts, classes, n: int) -> np.ndarray:
    """Select and write request n. Unanswered images of the last request stay requested; new picks fill the batch."""
    from trapkit.train import strategies

    candidates = np.flatnonzero(((df["split"] == "pool") & (df["label"] == "") & (df["status"] == "ok")).to_numpy())
    paths = df["path"].to_numpy()
    carried = np.zeros(0, np.int64)
    if n > 1 and run.request_path(n - 1).is_file():
        _, previous = labels_mod.read_request(run.request_path(n - 1))
        carried = candidates[np.isin(paths[candidates], list(previous))]
        if len(carried) > settings.select.batch:  # --batch was lowered: keep the most uncertain unanswered images
            carried = carried[np.argsort(strategies.margin_scores(probs[carried]), kind="stable")]
            carried = np.sort(carried[: settings.select.batch])
    fresh = np.zeros(0, np.int64)
    if settings.select.batch > len(carried):
        pool = strategies.Pool(probs, emb, np.setdiff1d(candidates, carried), labelled, counts)
        fresh = strategies.select(settings.select.strategy, pool, settings.select.batch - len(carried),
                                  seed=settings.select.seed + n)
    chosen = np.concatenate([carried, fresh])
    labels_mod.write_request(run.request_path(n), paths[candidates].tolist(), set(paths[chosen].tolist()))
    labels_mod.write_guesses(run.guesses_path(n), [
        (paths[i], classes[int(probs[i].argmax())], float(probs[i].max())) for i in chosen])
    return chosen


# -- status ---------------------------------------------------------------------------------

def status(run_dir: str | Path) -> dict:
    """Labels per class, rounds, latest metrics, and what to do next."""
    import json

    run = Run(run_dir)
    state = run.load_state()
    df = run.load_manifest()
    lab = df[_labelled_mask(df)]
    per_class = {c: int((lab["label"] == c).sum()) for c in _classes(state, df)}
    pool = df[df["split"] == "pool"]
    metrics_path = run.round_dir(state.round) / "metrics.json"
    latest = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    inbox = sorted(p.name for p in run.inbox_dir.glob("*.csv")) if run.inbox_dir.is_dir() else []
    request = run.request_path(state.round)
    history = []
    for n in range(1, state.round + 1):
        path = run.round_dir(n) / "metrics.json"
        if path.is_file():
            d = json.loads(path.read_text())
            history.append({"round": n, "labelled": d.get("labelled"), "accuracy": d.get("accuracy")})
    if state.round == 0:
        todo = "'trapkit al init' did not finish; run it again with the same options"
    elif inbox:
        todo = f"answers waiting in {run.inbox_dir}: run 'trapkit al next {run.root}'"
    else:
        todo = f"label the Selected rows of {request} (Species column), then 'trapkit al next {run.root} --labels FILE'"
    return {
        "round": state.round,
        "labels_per_class": per_class,
        "labelled": int(len(lab)),
        "pool_unlabelled": int(((pool["label"] == "") & (pool["status"] == "ok")).sum()),
        "unreadable": int((df["status"] != "ok").sum()),
        "validation_images": int((df["split"] == "validation").sum()),
        "metrics": {k: latest.get(k) for k in ("accuracy", "macro_precision", "macro_recall") if k in latest},
        "request": str(request),
        "inbox": inbox,
        "next": todo,
        "history": history,
        "stopping": stopping_hint(history),
        "problems": state.scan_problems,
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
    """The loop with a CSV of true labels answering each request, until `budget` pool labels; writes curve.csv/png."""
    truth = {a.path: a.species for a in labels_mod.read_answers(oracle)}
    run = Run(out)
    if run.state_path.is_file() and run.load_state().round > 0:
        raise TrapkitError(f"{run.root} already holds a run; give --out a new folder")
    result = init_run(out, settings)
    seed_labels = result.labels
    curve = [_curve_row(result, settings)]
    _write_curve(run, curve)
    while result.labels - seed_labels < budget and result.requested:
        selected = [i.path for i in labels_mod.current_request(out)]
        missing = [p for p in selected if p not in truth]
        if missing:
            raise TrapkitError(f"--oracle has no label for {len(missing)} requested image(s), e.g. {missing[:3]}")
        take = selected[: budget - (result.labels - seed_labels)]
        labels_mod.save_answers(out, {p: truth[p] for p in take}, allow_new_classes=True)
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
    from trapkit.train.metrics import figure_png, new_figure

    fig = new_figure(6, 4)
    ax = fig.subplots()
    for name, rows in curves.items():
        accuracy = [float("nan") if r["accuracy"] is None else r["accuracy"] for r in rows]  # NaN: not drawn
        ax.plot([r["labels"] for r in rows], accuracy, marker="o", markersize=3, label=name)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure_png(fig, dpi=90)
