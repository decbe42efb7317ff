"""CLI commands of this stage (registered by trapkit.app.cli).

Adapters turn argparse namespaces into plain keyword arguments; heavy imports
(onnxruntime, tritonclient) happen inside them so `trapkit --help` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trapkit import __version__
from trapkit.flags import add_ray_args, default_of, given, not_with, only_with, ray_settings
from trapkit.logfile import debug_log
from trapkit.serve.settings import ClassifySettings
from trapkit.serve.smoothing import SMOOTH_MODES, SmoothSettings


log = logging.getLogger(__name__)


def register(subparsers, common) -> None:
    _register_classify(subparsers, common)


def _register_classify(subparsers, common) -> None:
    p = subparsers.add_parser(
        "classify",
        parents=[common],
        help="classify MegaDetector detections (or whole images) into species",
        description="Crop every detection from MegaDetector's batch output, classify it, and write the same JSON "
        "(format 1.6) with classifications for Timelapse and MegaDetector tools. Without --detections, "
        "whole images are classified. Interrupted runs continue with --resume.",
    )
    p.add_argument("images", type=Path, metavar="IMAGES_DIR", help="folder the detections' file paths are relative to")
    p.add_argument("--model", help="model.onnx, an export folder, or hf://owner/name[@revision]")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                   help="which graph of an export folder to run: fp32 (model.onnx, the default), or the int8 / "
                   "fp16 graph that 'trapkit export --quantize int8' / '--precision fp16' wrote beside it")
    p.add_argument("--detections", type=Path, help="MegaDetector batch output JSON (format 1.3 or later)")
    p.add_argument("--out", type=Path, required=True, help="output JSON (MegaDetector format 1.6 with classifications)")
    p.add_argument("--csv", type=Path, help="also write a tidy CSV, one row per detection and rank")
    p.add_argument("--features", type=Path, metavar="FILE",
                   help="also write every classified detection's embedding, one row each (.parquet, or .csv for R "
                   "and spreadsheets); analyse it with trapkit features")
    p.add_argument("--threshold", type=float, default=None,
                   help="minimum detection confidence to classify (default: the model's, usually 0.1)")
    p.add_argument("--categories", nargs="+", default=None, metavar="NAME",
                   help="detection categories to classify (default: the model's, usually animal)")
    p.add_argument("--top-k", type=int, default=None,
                   help=f"classifications kept per detection (default {default_of(ClassifySettings, 'top_k')})")
    p.add_argument("--margin", type=float, default=None,
                   help="context around each box, as a fraction of its longer side (default: the model's, "
                   "usually 0.1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"crops per model call (default {default_of(ClassifySettings, 'batch_size')})")
    p.add_argument("--workers", type=int, default=None,
                   help="image decoding threads (default: one per CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime threads per batch (default: CPUs / --concurrency)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"images between checkpoints (default {default_of(ClassifySettings, 'checkpoint_every')})")
    p.add_argument("--sort-into", type=Path, metavar="DIR", help="copy images into DIR/<top species>/")
    p.add_argument("--link", action="store_true", help="with --sort-into: symlink instead of copying")
    a = p.add_argument_group("after the model (docs/classify.md)")
    a.add_argument("--rollup", type=float, default=None, metavar="THRESHOLD",
                   help="below this top-1 confidence, report the lowest taxon whose summed probability reaches it "
                   "(from the model's taxonomy; unknown without one; SpeciesNet and AddaxAI use 0.65)")
    a.add_argument("--allow-list", type=Path, metavar="CSV",
                   help="only these taxa (columns latin and/or common and/or label); the others' probability goes "
                   "to their nearest allowed ancestor")
    a.add_argument("--class-thresholds", type=Path, metavar="CSV",
                   help="label,threshold rows: below its bar a detection rolls up, or is unknown without taxonomy")
    a.add_argument("--smooth", nargs="?", const="sequence", choices=SMOOTH_MODES,
                   help="MegaDetector's classification smoothing within each image, each sequence (EXIF time and "
                   "folder, or one video), or both; --smooth alone means sequence")
    a.add_argument("--sequence-gap", type=float, default=None, metavar="SECONDS",
                   help=f"most seconds between photos of one sequence (default "
                   f"{default_of(ClassifySettings, 'sequence_gap'):g})")
    a.add_argument("--sequences-out", type=Path, metavar="CCT.json",
                   help="write the sequences as COCO Camera Traps images with seq_id (MegaDetector's smoothing reads it)")
    v = p.add_argument_group("video (pip install trapkit[video])")
    v.add_argument("--video-out", type=Path, metavar="VIDEO.json",
                   help="also write MegaDetector's video-level file: one entry per video, its best detection per "
                   "category with classifications")
    v.add_argument("--frame-sample", type=int, default=None, metavar="N",
                   help="without --detections: also classify every N-th frame of each video under IMAGES_DIR, whole")
    p.add_argument("--triton-url", help="classify on a Triton server (host:port or http://host:port)")
    p.add_argument("--triton-model", help="model name on the Triton server (default: the model's spec name)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="batches in flight at once (default: CPUs, at most 4; raise it for a big Triton server)")
    add_ray_args(p, "classify")
    p.set_defaults(func=_classify)


def _classify(args) -> int:
    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.errors import TrapkitError
    from trapkit.serve.runtime import available_cpus, open_runtime
    from trapkit.serve.settings import Parallelism, PostSettings

    only_with("--sort-into DIR", args.sort_into is not None, {"--link": args.link})
    only_with("--smooth sequence|both or --sequences-out", args.smooth in ("sequence", "both") or bool(
        args.sequences_out), {"--sequence-gap": args.sequence_gap is not None})
    if args.frame_sample is not None and args.detections is not None:
        raise TrapkitError("--frame-sample only applies without --detections (MegaDetector chose the frames); drop it")
    not_with("--ray", args.ray is not None, {
        "--workers": args.workers is not None, "--threads": args.threads is not None,
        "--concurrency": args.concurrency is not None, "--triton-url": args.triton_url is not None},
        "the cluster decodes and runs the model (onnxruntime in each actor); size it with --ray-actors")
    cluster = ray_settings(args)
    par = Parallelism.for_cpus(available_cpus(), args.workers, args.concurrency, args.threads)
    post = PostSettings(rollup=args.rollup, allow_list=args.allow_list, class_thresholds=args.class_thresholds)
    settings = ClassifySettings(**given(
        threshold=args.threshold, categories=tuple(args.categories) if args.categories else None, top_k=args.top_k,
        margin=args.margin, post=post, smooth=SmoothSettings(args.smooth) if args.smooth else None,
        sequence_gap=args.sequence_gap, frame_sample=args.frame_sample, batch_size=args.batch_size,
        workers=par.workers, concurrency=par.concurrency, checkpoint_every=args.checkpoint_every))
    paths = ClassifyPaths(images_dir=args.images, out=args.out, detections=args.detections, csv=args.csv,
                          sort_into=args.sort_into, link=args.link, sequences_out=args.sequences_out,
                          video_out=args.video_out, features=args.features)
    with debug_log(args.out.with_name(args.out.name + ".log")):
        log.debug("trapkit %s classify %s", __version__, vars(args))
        runtime = open_runtime(args.model, triton_url=args.triton_url, triton_model=args.triton_model,
                               threads=1 if cluster else par.threads, concurrency=par.concurrency,
                               precision=args.precision)
        try:
            summary = classify_images(paths, runtime, settings, resume=args.resume, executor=_executor(cluster))
        finally:
            runtime.close()
    print(summary.table())
    written = [args.out, args.csv, args.sequences_out, args.video_out, args.features]
    print("wrote " + ", ".join(str(w) for w in written if w) + f"; debug log in {args.out}.log")
    return 0


def _executor(cluster):
    if cluster is None:
        return None
    from trapkit.serve.ray_classify import RayExecutor

    return RayExecutor(cluster)
