"""The `trapkit` command: a thin dispatcher.

Each stage module exposes `register(subparsers)`, which adds its parsers and
sets `func` to a small adapter that turns the parsed namespace into plain
keyword arguments for a library function. Those modules import nothing heavy
at import time (torch, onnxruntime, gradio load inside the command), so
`trapkit --help` answers at once. User errors (`TrapkitError`) are caught
here, and only here: one line on stderr, exit code 1, traceback with `-v`.
Everything trapkit prints to the terminal has control characters escaped: a
file name in a detections file or a CSV cell can hold terminal escape codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from trapkit import __version__
from trapkit.errors import TrapkitError

log = logging.getLogger("trapkit")
# C0 and C1 control characters but tab and newline: what a terminal could act on.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with terminal control characters shown as escapes (ESC as \\x1b), never acted on."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _PrintableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))

# Order is the order in `trapkit --help`.
COMMAND_MODULES = (
    "trapkit.app.quickstart",
    "trapkit.train.cli",
    "trapkit.export.cli",
    "trapkit.serve.cli",
    "trapkit.ecology.cli",
    "trapkit.serve.cli_web",
    "trapkit.serve.cli_hub",
)


def build_parser() -> argparse.ArgumentParser:
    # -v is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging and full tracebacks")
    parser = argparse.ArgumentParser(
        prog="trapkit",
        parents=[common],
        description="From a small labelled seed and a big unlabelled pool to a deployed species classifier.",
        epilog="Run 'trapkit COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"trapkit {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)  # a command's log file may take DEBUG records too
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if not verbose:
        # Third-party libraries chatter at INFO; users want trapkit's own progress.
        for noisy in ("httpx", "urllib3", "PIL", "matplotlib", "gradio", "huggingface_hub", "timm"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    setup_logging(verbose)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except TrapkitError as e:
        if verbose:
            log.exception("user error")
        print(f"trapkit: error: {printable(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trapkit: interrupted; work finished so far is kept: rerun the command to go on "
              "(trapkit classify: add --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
