"""Launching the Gradio pages in-process on 127.0.0.1 for tests, and a few bad uploads."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
import sys
import zlib
from pathlib import Path

from trapkit.samples import SAMPLES_DIR
from trapkit.web import launch


@contextlib.contextmanager
def launched(app, allowed_paths=(SAMPLES_DIR,), **options):
    """Serve a gr.Blocks on 127.0.0.1 in a thread; yield its URL; close it. `options`: more of `launch`'s."""
    url = launch(app, "127.0.0.1", None, block=False, allowed_paths=list(allowed_paths), **options)
    try:
        yield url
    finally:
        app.close()


def client(url: str):
    """A gradio_client for `url` that sends no telemetry and does not look up the Hub's agent registry."""
    from unittest.mock import patch

    from gradio_client import Client
    from huggingface_hub import constants

    with patch.object(constants, "HF_HUB_OFFLINE", True):  # only while the client builds its headers
        return Client(url, verbose=False, download_files=False, analytics_enabled=False)


_seen_hosts: list[str] | None = None


def _audit(event: str, args) -> None:
    if _seen_hosts is None:
        return
    if event == "socket.getaddrinfo":
        _seen_hosts.append(str(args[0]))
    elif event == "socket.connect" and isinstance(args[1], tuple):
        _seen_hosts.append(str(args[1][0]))


@contextlib.contextmanager
def outside_connections():
    """Yield a list that ends up holding every non-loopback host this process looked up or connected to."""
    global _seen_hosts
    if _audit not in _hooks:
        sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside this block
        _hooks.append(_audit)
    outside: list[str] = []
    _seen_hosts = []
    try:
        yield outside
    finally:
        seen, _seen_hosts = _seen_hosts, None
        outside.extend(h for h in seen if not _is_loopback(h))


_hooks: list = []


def only_loopback(page, left_machine: list) -> None:
    """Let a browser page fetch from 127.0.0.1 only; any other address is aborted and recorded in left_machine."""

    def route(request_route):
        target = request_route.request.url
        if target.startswith(("http://127.0.0.1", "data:", "blob:")):
            request_route.continue_()
        else:
            left_machine.append(target)
            request_route.abort()

    page.route("**/*", route)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "", "None"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def status_of(request) -> int:
    """The HTTP status a `urllib.request.Request` gets, errors included."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def png(width: int, height: int, data: bytes) -> bytes:
    """A PNG file of an 8-bit greyscale `width` x `height` picture whose compressed pixel rows are `data`."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def huge_png(path: Path, side: int = 20_000) -> Path:
    """A valid PNG header announcing side x side pixels (400 MP), with one empty data chunk: a decompression bomb."""
    path.write_bytes(png(side, side, zlib.compress(b"")))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
