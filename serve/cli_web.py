"""`trapkit demo`: the Gradio demo page (registered by trapkit.cli).

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


def _demo(args) -> int:
    check_server_args(args.host, args.port)
    from trapkit.serve.demo import serve_demo

    settings = DemoSettings(**given(top_k=args.top_k, threshold=args.threshold, max_batch_size=args.max_batch))
    serve_demo(args.model, detections=args.detections, settings=settings, host=args.host, port=args.port)
    return 0
