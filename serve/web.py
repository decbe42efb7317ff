"""What the demo and the labelling page share: how a Gradio app is launched.

Both pages listen on loopback unless told otherwise, never open a public
share link, and send nothing anywhere: Gradio's usage analytics are off in
every `gr.Blocks` trapkit builds (`BLOCKS_OPTIONS`), and the default theme's
fonts are served by the app itself.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# Camera-trap JPEGs are 1-10 MB; anything far past that is not a photo.
MAX_UPLOAD = "100mb"
# Keyword arguments for every gr.Blocks: no analytics request leaves the machine.
BLOCKS_OPTIONS = {"analytics_enabled": False}


def launch(app, host: str = DEFAULT_HOST, port: int | None = None, block: bool = True,
           allowed_paths: list[Path] = ()) -> str:
    """Serve `app` (a gr.Blocks) on host:port and return its URL.

    `block=False` returns at once with the server running in a thread (tests
    drive it with gradio_client or a browser, then call `app.close()`).
    `allowed_paths`: folders whose files the page may serve (the bundled example photos).
    """
    _check_host(host)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            share=False,
            quiet=True,  # Gradio's banner suggests share links; trapkit prints its own line
            show_error=False,  # unexpected errors show a short message, never a traceback
            max_file_size=MAX_UPLOAD,
            allowed_paths=[str(p) for p in allowed_paths],
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
        )
    except OSError as e:
        where = f"port {port}" if port else "any port from 7860"
        raise TrapkitError(f"cannot listen on {host} {where} ({e}); pick a free port with --port") from None
    if block:
        log.info("serving on %s (Ctrl+C to stop)", app.local_url)
        app.block_thread()
    return app.local_url


def _check_host(host: str) -> None:
    """Gradio reports any bind failure as a busy port; a host that is unknown or not this machine's is said so."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)  # port 0: only the address is tried
    except OSError as e:
        raise TrapkitError(f"cannot listen on host {host!r} ({e.strerror or e}); check --host (127.0.0.1 for this "
                           "machine only, 0.0.0.0 for every network)") from None
