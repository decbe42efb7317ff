"""What every trapkit web page shares: its command-line options, its host checks, how it is launched.

Pages listen on loopback unless told otherwise, never open a public share
link, and send nothing anywhere: Gradio's usage analytics are off in every
`gr.Blocks` trapkit builds (`BLOCKS_OPTIONS`), and the default theme's fonts
are served by the app itself. A page answers only requests whose `Host`
header names the address it listens on (`allowed_host_names`): a page on
another site that points its own name at 127.0.0.1 (DNS rebinding) cannot
read the page or save answers through the person's browser.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
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
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    guard = Middleware(TrustedHostMiddleware, allowed_hosts=allowed_host_names(host))
    try:
        app.launch(
            app_kwargs={"middleware": [guard]},
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


def allowed_host_names(host: str) -> list[str]:
    """The `Host` header names a page listening on `host` answers to ("*": any, for a page exposed on purpose)."""
    if host in WILDCARD_HOSTS:
        return ["*"]  # --host 0.0.0.0: reached by whatever name the network gives this machine
    names = {*LOOPBACK_NAMES, "[::1]", host, f"[{host}]" if ":" in host else host}
    return sorted(names)


def host_allowed(header: str | None, allowed: list[str]) -> bool:
    """Whether a request's `Host` header (with or without a port) names one of `allowed`."""
    if "*" in allowed:
        return True
    if not header:
        return False
    name = header.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[: name.find("]") + 1]
    elif name.count(":") == 1:  # 127.0.0.1:8000
        name = name.split(":")[0]
    return name in allowed


def add_server_args(p) -> None:
    """--host and --port, as every page takes them."""
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the page, without login)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")


def check_server_args(host: str, port: int | None) -> None:
    if port is not None and not 0 < port < 65536:
        raise TrapkitError(f"--port {port} is not a port number; use 1-65535")
    if host not in LOOPBACK_NAMES:
        log.warning("listening on %s: anyone who can reach this machine can use the page", host)
