"""Atomic file writes: temp file in the same folder, fsync, rename.

A process killed at any instant leaves either the old file or the new one,
never a torn one; run state, checkpoints and outputs all go through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from pathlib import Path

from trapkit.errors import TrapkitError


def _temp_beside(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    # Mode 0o666 filtered by the process umask, as for any new file (mkstemp's 0600 would hide results
    # from the rest of a lab group); the umask is never read or changed, so threads cannot race on it.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    atomic_write_bytes(dst, Path(src).read_bytes())


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside `path` for a library that writes files itself (a Parquet or CSV stream):
    fsynced and renamed onto `path` when the block ends, removed if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(flag: str, path: str | Path, folder: str | Path) -> None:
    """A one-line error unless files can be made in `folder` (created later if missing), before any work."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise TrapkitError(f"cannot write {flag} {path}: {existing} is a file, not a folder; choose another place")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise TrapkitError(
            f"cannot write {flag} {path}: no file can be made in {existing} ({e.strerror or e}); "
            "choose a writable place"
        ) from None
