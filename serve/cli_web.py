"""`trapkit demo`, `trapkit label` and `trapkit review`: the web pages (registered by trapkit.cli).

Gradio and the model load inside the adapters, so `trapkit --help` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
    p.add_argument("--top-k", type=int, default=5, help="species to show per photo or detection (default 5)")
    p.add_argument("--threshold", type=float, default=None,
                   help="detections below this confidence are not classified (default: as 'trapkit classify')")
    p.add_argument("--max-batch", type=int, default=8,
                   help="requests from concurrent users classified in one model call (default 8)")
    _add_server_args(p)
    p.set_defaults(func=_demo)

    p = subparsers.add_parser(
        "label",
        parents=[common],
        help="web page: answer the current active-learning label request",
        description="Serve a Gradio page showing the images the current round of RUN asks about, with the "
        "model's guess; answers are saved into RUN as they are given (as an answers CSV that "
        "'trapkit al next' ingests), so closing the page loses nothing.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder made by 'trapkit al init'")
    p.add_argument("--allow-new-classes", action="store_true",
                   help="accept species names that are not classes yet ('al next' needs the same flag)")
    _add_server_args(p)
    p.set_defaults(func=_label)

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
    p.add_argument("--write-verified", type=Path, default=None, metavar="OUT.json",
                   help="also keep a copy of RESULTS with the verified species at confidence 1.0")
    p.add_argument("--sequence-gap", type=float, default=None, metavar="SECONDS",
                   help="most seconds between photos of one sequence for 'e' (default: RESULTS' smoothing gap, "
                   "else 60)")
    _add_server_args(p)
    p.set_defaults(func=_review)


def _add_server_args(p) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the page, without login)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")


def _check_server_args(host: str, port: int | None) -> None:
    if port is not None and not 0 < port < 65536:
        raise TrapkitError(f"--port {port} is not a port number; use 1-65535")
    if host not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach this machine can use the page", host)


def _demo(args) -> int:
    _check_server_args(args.host, args.port)
    from trapkit.serve.demo import DemoSettings, serve_demo

    chosen = {"top_k": args.top_k, "threshold": args.threshold, "max_batch_size": args.max_batch}
    settings = DemoSettings(**{k: v for k, v in chosen.items() if v is not None})
    serve_demo(args.model, detections=args.detections, settings=settings, host=args.host, port=args.port)
    return 0


def _label(args) -> int:
    _check_server_args(args.host, args.port)
    from trapkit.serve.label_page import serve_label_page

    serve_label_page(args.run, allow_new_classes=args.allow_new_classes, host=args.host, port=args.port)
    return 0


def _review(args) -> int:
    _check_server_args(args.host, args.port)
    from trapkit.serve.review import serve_review

    serve_review(args.results, args.images, args.answers, model=args.model, verified=args.write_verified,
                 gap_seconds=args.sequence_gap, host=args.host, port=args.port)
    return 0
