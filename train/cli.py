"""`trapkit al init | next | status | simulate` and `trapkit label`: thin adapters over trapkit.train.

Nothing heavy is imported here; torch loads inside the commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trapkit.flags import add_ray_args, ray_settings
from trapkit.crop_policy import INTERPOLATIONS
from trapkit.train.settings import FLAGS, LOSSES, MININGS, resolve
from trapkit.train.settings import default_of as d
from trapkit.web import add_server_args, check_server_args


def _categories(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _init_options(p: argparse.ArgumentParser, required: bool) -> None:
    """The options of `al init`, shared by `al simulate`. Defaults are None: 'not given' (config file wins);
    the help states the settings dataclasses' defaults (`default_of`)."""
    p.add_argument("--labelled", required=required, help="seed images, one sub-folder per class")
    p.add_argument("--unlabelled", required=required, help="pool of images to label (any tree)")
    p.add_argument("--validation", help="held-out validation images, one sub-folder per class "
                   f"(default: hold out {d('validation_fraction'):.0%} of the seed images)".replace("%", "%%"))
    p.add_argument("--detections", metavar="POOL_MD.json",
                   help="MegaDetector output for the pool (paths relative to --unlabelled; any format from 1.3, "
                   "'trapkit classify' output too): every detection at or above --threshold is one item, cropped "
                   "as 'trapkit classify' crops it")
    p.add_argument("--seed-detections", metavar="SEED_MD.json",
                   help="with --detections: MegaDetector output for --labelled; each detection takes its image's "
                   "class folder (without it, seed images are crops already made)")
    p.add_argument("--validation-detections", metavar="VAL_MD.json",
                   help="with --detections: MegaDetector output for --validation (without it, crops already made)")
    p.add_argument("--threshold", type=float, help=f"detection confidence for an item (default {d('threshold')})")
    p.add_argument("--categories", type=_categories, metavar="NAMES",
                   help=f"MegaDetector categories that are items, comma-separated (default {','.join(d('categories'))})")
    p.add_argument("--crop-margin", type=float,
                   help=f"context around a box, as a fraction of its longer side (default {d('crop_margin')})")
    p.add_argument("--interpolation", choices=INTERPOLATIONS,
                   help=f"resampling to the input size (default {d('interpolation')})")
    p.add_argument("--config", help="JSON settings file (defaults < config < flags)")
    p.add_argument("--backbone", help=f"timm model name, or tv:NAME (default {d('backbone')})")
    p.add_argument("--weights", help=f"hub | none | lite0-offline | path to a state dict (default {d('weights')})")
    p.add_argument("--input-size", type=int, help="square input size in pixels (default: the backbone's)")
    p.add_argument("--feat-dim", type=int, help=f"embedding size (default {d('feat_dim')})")
    p.add_argument("--loss", choices=LOSSES, help=f"embedding fine-tuning loss (default {d('loss')})")
    p.add_argument("--mining", choices=MININGS, help=f"triplet mining (default {d('mining')})")
    _round_options(p)


def _round_options(p: argparse.ArgumentParser) -> None:
    from trapkit.train.strategies import STRATEGIES

    p.add_argument("--strategy", choices=tuple(STRATEGIES), help=f"selection strategy (default {d('strategy')})")
    p.add_argument("--batch", type=int, help=f"items requested per round (default {d('batch')})")
    p.add_argument("--seed", type=int, help=f"random seed (default {d('seed')})")
    p.add_argument("--per-sequence", action=argparse.BooleanOptionalAction, default=None,
                   help="ask about at most one item per camera-trap sequence in a round (default: on for runs on "
                   "detections, off for whole images)")
    p.add_argument("--sequence-gap", type=float, metavar="SECONDS",
                   help=f"most seconds between photos of one sequence (default {d('sequence_gap'):g})")
    p.add_argument("--finetune-epochs", type=int,
                   help=f"embedding fine-tuning epochs per finetune; 0 keeps it frozen (default {d('finetune_epochs')})")
    p.add_argument("--finetune-every", type=int,
                   help=f"finetune again after this many new labels (default {d('finetune_every')})")
    p.add_argument("--head-max-epochs", type=int,
                   help=f"MLP head epoch cap (default {d('head_max_epochs')}, early stopping)")


def _flags(args: argparse.Namespace) -> dict:
    """The settings flags given on this command line (every `FLAGS` name its parser has)."""
    return {k: getattr(args, k) for k in FLAGS if hasattr(args, k)}


def register(subparsers, common) -> None:
    al = subparsers.add_parser("al", parents=[common], help="active-learning rounds: init, next, status, simulate",
                               description="Active learning: each command does one step and exits.")
    sub = al.add_subparsers(title="steps", metavar="STEP")
    al.set_defaults(func=lambda args: al.print_help() or 2)

    p = sub.add_parser("init", parents=[common], help="start a run: scan, finetune, fit, first label request")
    p.add_argument("run", help="run folder to create")
    _init_options(p, required=True)
    p.add_argument("--taxonomy", metavar="CSV",
                   help="label,taxonomy CSV, one SpeciesNet-style 'id;class;order;family;genus;species;common name' "
                   "per class; copied to RUN/taxonomy.csv and carried by every model of the run")
    add_ray_args(p, "embed the images")
    p.set_defaults(func=_init)

    p = sub.add_parser("next", parents=[common], help="ingest answers, retrain, write the next request")
    p.add_argument("run", help="run folder")
    p.add_argument("--labels", action="append", default=[], metavar="CSV",
                   help="answers CSV (Timelapse export, or the review page's; repeatable); RUN/inbox/*.csv is read "
                   "too. Paths may start from the pool folder or from a season's folder: each file is matched to "
                   "the folder its images are in")
    p.add_argument("--labels-root", metavar="DIR",
                   help="the folder the --labels files' paths start from (the pool or a season folder), where "
                   "their images are in more than one")
    p.add_argument("--allow-new-classes", action="store_true", help="accept class names not seen before")
    p.add_argument("--rescan", action="store_true",
                   help="add images that appeared in the pool folder since init (runs on whole images)")
    p.add_argument("--add-pool", metavar="DIR", help="add a new season from any folder; its items are embedded this "
                   "round and join selection, and --labels given with it may answer them with paths relative to DIR "
                   "(as 'trapkit review --images DIR' writes them)")
    p.add_argument("--detections", dest="add_detections", metavar="MD.json",
                   help="with --add-pool, in a run on detections: the season's MegaDetector output (paths relative "
                   "to DIR); 'trapkit classify' output gives the first guesses")
    _round_options(p)
    add_ray_args(p, "embed the images")
    p.set_defaults(func=_next)

    p = sub.add_parser("status", parents=[common], help="labels per class, rounds, metrics, what to do next")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser("simulate", parents=[common], help="run the loop with an oracle CSV answering (benchmarks)")
    p.add_argument("--oracle", required=True, help="CSV of true labels (File, RelativePath, Species; and "
                   "Detection to label one detection)")
    p.add_argument("--budget", type=int, required=True, help="pool labels to spend")
    p.add_argument("--out", required=True, help="run folder to create; curve.csv and curve.png go here")
    p.add_argument("--allow-new-classes", action="store_true", help="accept oracle classes the seed lacks")
    _init_options(p, required=True)
    p.set_defaults(func=_simulate)

    p = subparsers.add_parser(
        "label",
        parents=[common],
        help="web page: answer the current active-learning label request",
        description="Serve a page showing what the current round of RUN asks about as a grid of crops, each "
        "with the model's guess, with the keys of 'trapkit review' (all listed on the page: arrows, space, 1-9, /, "
        "a, e, x, u). Answers are saved into RUN as they are given (as an answers CSV that 'trapkit al next' "
        "ingests), so closing the page loses nothing.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder made by 'trapkit al init'")
    p.add_argument("--allow-new-classes", action="store_true",
                   help="accept species names that are not classes yet ('al next' needs the same flag)")
    add_server_args(p)
    p.set_defaults(func=_label)


def _report(result) -> None:
    from trapkit.train.metrics import shown

    m = result.metrics
    print(f"round {result.round}: {result.labels} labels, validation accuracy {shown(m['accuracy'])}, "
          f"macro recall {shown(m['macro_recall'])} ({m['n']} images)")
    if result.ingest is not None:
        print(f"answers: {result.ingest.summary()}")
    for problem in result.problems:
        print(f"note: {problem}")
    print(f"next: label the {result.requested} selected item(s) in {result.request}")


def _init(args) -> int:
    from trapkit.train.loop import init_run

    cluster = ray_settings(args)
    _report(init_run(args.run, resolve(args.config, _flags(args)), taxonomy=args.taxonomy, cluster=cluster))
    return 0


def _next(args) -> int:
    from trapkit.train.loop import next_round

    cluster = ray_settings(args)
    _report(next_round(args.run, args.labels, _flags(args), allow_new_classes=args.allow_new_classes,
                       rescan=args.rescan, add_pool=args.add_pool, add_detections=args.add_detections,
                       cluster=cluster, labels_root=args.labels_root))
    return 0


def _status(args) -> int:
    from trapkit.train.loop import status
    from trapkit.train.metrics import shown

    s = status(args.run)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"round {s['round']}, {s['labelled']} labelled, {s['pool_unlabelled']} unlabelled in the pool, "
          f"{s['unreadable']} unreadable, {s['validation_images']} validation items")
    if s["pool_images_without_detections"]:
        print(f"{s['pool_images_without_detections']} pool image(s) have no detection at or above the threshold "
              "(left out)")
    if s["wrong_boxes"]:
        print(f"{s['wrong_boxes']} item(s) answered [wrong box] (not trained on)")
    if s["taxa"]:
        print(f"{sum(s['taxa'].values())} item(s) answered at a higher taxon, kept aside (not trained on, not asked "
              "again): " + ", ".join(f"{name} {k}" for name, k in sorted(s["taxa"].items())))
    for c, k in s["labels_per_class"].items():
        print(f"  {c:<30} {k:>7}")
    if s["metrics"]:
        print("latest: " + ", ".join(f"{k} {shown(v)}" for k, v in s["metrics"].items()))
    if len(s["history"]) > 1:
        print("history: " + ", ".join(f"{h['labelled']} labels {shown(h['accuracy'])}" for h in s["history"]))
    asked = [h for h in s["history"] if h.get("asked_sequences") is not None]
    if asked:
        print("asked per round: " + ", ".join(f"round {h['round']}: {h['asked']} item(s) from {h['asked_sequences']} "
                                              "sequence(s)" for h in asked))
    for problem in s["problems"]:
        print(f"note: {problem}")
    if s["stopping"]:
        print(f"stopping: {s['stopping']}")
    print(f"next: {s['next']}")
    return 0


def _simulate(args) -> int:
    from trapkit.train.loop import simulate
    from trapkit.train.metrics import shown

    curve = simulate(args.out, resolve(args.config, _flags(args)), args.oracle, args.budget,
                     allow_new_classes=args.allow_new_classes)
    print("labels  accuracy  macro_recall")
    for r in curve:
        print(f"{r['labels']:>6}  {shown(r['accuracy'], 4):>8}  {shown(r['macro_recall'], 4):>12}")
    print(f"curve: {args.out}/curve.csv")
    return 0


def _label(args) -> int:
    check_server_args(args.host, args.port)
    from trapkit.train.label_page import serve_label_page

    serve_label_page(args.run, allow_new_classes=args.allow_new_classes, host=args.host, port=args.port)
    return 0
