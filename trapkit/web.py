"""What every trapkit web page shares: its command-line options, its host checks, how it is launched.

Pages listen on loopback unless told otherwise, never open a public share
link, and send nothing anywhere: Gradio's usage analytics are off in every
`gr.Blocks` trapkit builds (`BLOCKS_OPTIONS`), and the default theme's fonts
are served by the app itself. A page answers only requests whose `Host`
header names the address it listens on (`allowed_host_names`): a page on
another site that points its own name at 127.0.0.1 (DNS rebinding) cannot
read the page or save answers through the person's browser.

A Gradio page also (`_PageGuard`) refuses requests that change something (POST, ...)
when a browser says they come from another site (`same_origin`, the grid pages' rule
too), keeps at most `MAX_STORED_UPLOADS` bytes of uploads at once (each deleted after
`UPLOAD_LIFETIME`), and sends a content security policy that lets it load and fetch
from itself alone (`CONTENT_SECURITY_POLICY`).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# Camera-trap JPEGs are 1-10 MB; anything far past that is not a photo.
MAX_UPLOAD = "100mb"
MAX_STORED_UPLOADS = 10**9  # bytes of uploads one page keeps at once
UPLOAD_LIFETIME = 3600  # seconds an upload is kept
# Keyword arguments for every gr.Blocks: no analytics request leaves the machine; uploads (and the pictures
# made for answers) are deleted once an hour old, checked every 10 minutes.
BLOCKS_OPTIONS = {"analytics_enabled": False, "delete_cache": (600, UPLOAD_LIFETIME)}
# Everything from the page's own origin. Gradio's page has inline scripts and styles, and shows pictures as data:
# and blob: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; "
                           "connect-src 'self'; worker-src 'self' blob:; base-uri 'self'; form-action 'self'; "
                           "frame-ancestors 'self'")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# What `trapkit` says when Ctrl-C stops an answers page before it is serving (loading a season, say).
PAGE_INTERRUPTED = "every answer given on the page is already saved"


def launch(app, host: str = DEFAULT_HOST, port: int | None = None, block: bool = True,
           allowed_paths: list[Path] = (), max_stored: int = MAX_STORED_UPLOADS) -> str:
    """Serve `app` (a gr.Blocks) on host:port and return its URL.

    `block=False` returns at once with the server running in a thread (tests
    drive it with gradio_client or a browser, then call `app.close()`).
    `allowed_paths`: folders whose files the page may serve (the bundled example photos).
    `max_stored`: bytes of uploads the page keeps at once.
    """
    _check_host(host)
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=allowed_host_names(host))
    guard = Middleware(_PageGuard, blocks=app, max_stored=max_stored)
    try:
        app.launch(
            app_kwargs={"middleware": [hosts, guard]},
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


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request may change something: no `Origin` header (not a browser: gradio_client, curl), or one
    naming the `Host` it was sent to. A page on another site (or `Origin: null`) is refused."""
    return not origin or urlsplit(origin).netloc.lower() == (host or "").strip().lower()


class _PageGuard:
    """ASGI middleware of a Gradio page: the module docstring's last paragraph."""

    def __init__(self, app, blocks, max_stored: int):
        self.app, self.blocks, self.max_stored = app, blocks, max_stored
        self._incoming = 0  # bytes of uploads being received now

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        method = scope.get("method", "GET")
        if (scope["type"] == "websocket" or method not in _SAFE_METHODS) and not same_origin(
                headers.get("origin"), headers.get("host")):
            return await _refuse(scope, receive, send, 403, "cross-origin requests are refused")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        size = 0
        if method == "POST" and scope["path"].rstrip("/").endswith("/upload"):
            length = headers.get("content-length", "")
            if not length.isdigit():
                return await _refuse(scope, receive, send, 411, "send a Content-Length")
            size = int(length)
            if self._stored() + self._incoming + size > self.max_stored:
                return await _refuse(scope, receive, send, 413, (
                    f"this page keeps at most {self.max_stored / 1e6:.0f} MB of uploads at once, each for "
                    f"{UPLOAD_LIFETIME // 60} minutes; try again later"))

        async def send_with_policy(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()),
                                      (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())]
            await send(message)

        self._incoming += size  # reserved before the first await: the check above cannot interleave with another
        try:
            await self.app(scope, receive, send_with_policy)
        finally:
            self._incoming -= size

    def _stored(self) -> int:
        """Bytes of this page's uploads still on disk."""
        total = 0
        for path in list(self.blocks.upload_file_set):
            try:
                total += os.stat(path).st_size
            except OSError:  # deleted meanwhile
                pass
        return total


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        from starlette.websockets import WebSocketClose

        return await WebSocketClose(code=1008, reason=message)(scope, receive, send)
    from starlette.responses import PlainTextResponse

    await PlainTextResponse(message, status_code=status)(scope, receive, send)


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
