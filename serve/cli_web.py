"""`trapkit demo` (the Gradio demo page) and `trapkit review` (the verification grid), registered by trapkit.app.cli.

Gradio and the model load inside the adapters, so `trapkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from trapkit.flags import default_of, given
from trapkit.serve.settings import DemoSettings
from trapkit.web import add_server_args, check_server_args


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "demo",
        parents=[common],
        help="web page: upload photos, see the top species",
        description="Serve a Gradio page where photos are uploaded and classified by MODEL, "
        "with each detected animal labelled when MegaDetector output is given. "
        "Listens on 127.0.0.1 unless --host says otherwise; there is no public share link.",
    )
    p.add_argument("--model", required=True, help="model.onnx, an export folder, or hf://owner/name[@rev]")
    p.add_argument("--detections", type=Path, default=None,
                   help="MegaDetector batch JSON; uploads are matched to it by file name")
    p.add_argument("--top-k", type=int, default=None,
                   help=f"species to show per photo or detection (default {default_of(DemoSettings, 'top_k')})")
    p.add_argument("--threshold", type=float, default=None,
                   help="detections below this confidence are not classified (default: the model's, usually 0.1)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="requests from concurrent users classified in one model call "
                   f"(default {default_of(DemoSettings, 'max_batch_size')})")
    add_server_args(p)
    p.set_defaults(func=_demo)

    p = subparsers.add_parser(
        "review",
        parents=[common],
        help="web page: verify a classify result crop by crop, keyboard-first",
        description="Serve a page showing every classified detection of RESULTS as a crop with its species, "
        "grouped by species and sorted by confidence. Keys (all listed on the page): arrows move, space selects, "
        "1-9 give a species, / searches all classes, a accepts the page, e gives a sequence its majority, "
        "x marks a wrong box, u undoes. Every decision is saved at once to ANSWERS, one row per detection "
        "(File, RelativePath, Detection, Species), the format 'trapkit al next --labels' ingests; reopening "
        "continues where you stopped. Listens on 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("results", type=Path, metavar="RESULTS", help="'trapkit classify' output (MegaDetector JSON "
                   "with classifications)")
    p.add_argument("--images", type=Path, required=True, metavar="DIR",
                   help="the image folder RESULTS' file paths start from")
    p.add_argument("--answers", type=Path, required=True, metavar="ANSWERS.csv",
                   help="where decisions are saved (created, or continued when it exists)")
    p.add_argument("--model", default=None,
                   help="model.onnx or export folder: 'similar' (s) sorts crops by its embedding")
    p.add_argument("--features", type=Path, default=None, metavar="TABLE",
                   help="the table 'trapkit classify --features' wrote with RESULTS: 'similar' (s) sorts by its "
                   "stored embeddings (no model needed)")
    p.add_argument("--write-verified", type=Path, default=None, metavar="OUT.json",
                   help="also keep a copy of RESULTS with the verified species at confidence 1.0")
    p.add_argument("--sequence-gap", type=float, default=None, metavar="SECONDS",
                   help="most seconds between photos of one sequence for 'e' (default: the gap RESULTS was "
                   "classified with, else 60)")
    p.add_argument("--reviewer", default="", metavar="NAME",
                   help="who is answering: written beside each answer (Reviewer column; Camtrap DP's classifiedBy)")
    add_server_args(p)
    p.set_defaults(func=_review)


def _demo(args) -> int:
    check_server_args(args.host, args.port)
    from trapkit.serve.demo import serve_demo

    settings = DemoSettings(**given(top_k=args.top_k, threshold=args.threshold, max_batch_size=args.max_batch))
    serve_demo(args.model, detections=args.detections, settings=settings, host=args.host, port=args.port)
    return 0


def _review(args) -> int:
    check_server_args(args.host, args.port)
    from trapkit.serve.review import serve_review

    serve_review(args.results, args.images, args.answers, model=args.model, verified=args.write_verified,
                 gap_seconds=args.sequence_gap, features=args.features, reviewer=args.reviewer, host=args.host,
                 port=args.port)
    return 0
