"""`trapkit publish`: upload an exported Hub folder to the Hugging Face Hub (registered by trapkit.app.cli)."""

from __future__ import annotations

from pathlib import Path


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "publish",
        parents=[common],
        help="upload an exported model to the Hugging Face Hub",
        description="Create the Hub repo if needed and upload the Hub folder written by "
        "'trapkit export --hub-folder DIR' (model.onnx, config.json, README.md) in one commit. "
        "The token is read from an environment variable and never printed. Load it back anywhere "
        "with --model hf://OWNER/NAME[@REVISION]. HF_ENDPOINT selects another Hub.",
    )
    p.add_argument("folder", type=Path, metavar="EXPORT_DIR",
                   help="the Hub folder written by trapkit export --hub-folder")
    p.add_argument("--repo-id", required=True, metavar="OWNER/NAME", help="Hub repo to create or update")
    p.add_argument("--private", action="store_true",
                   help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--token-env", default="HF_TOKEN", metavar="VAR",
                   help="environment variable holding a write token (default HF_TOKEN)")
    p.set_defaults(func=_publish)


def _publish(args) -> int:
    from trapkit.serve.hub import publish

    url = publish(args.folder, args.repo_id, private=args.private, token_env=args.token_env)
    print(f"published {args.repo_id}: {url}")
    print(f"use it with --model hf://{args.repo_id}")
    return 0
