"""Publish an exported model to the Hugging Face Hub and load one back by `hf://owner/name[@revision]`.

`publish` uploads the Hub folder that `trapkit export --hub-folder` writes
(model.onnx, config.json, README.md, CHANGELOG.md) in one commit, creating the
repo if needed: each export becomes a new revision of the same repo, whose
commit message is the export's changelog entry. `resolve_model` downloads a repo snapshot into the Hugging Face cache
(`HF_HOME`, `HF_HUB_CACHE`) and returns its folder; with `HF_HUB_OFFLINE=1`,
or when the Hub cannot be reached, it answers from the cache.

`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` are read at call
time and passed to `huggingface_hub` explicitly (the library reads them once,
at import). The token is read from an environment variable and handed to the
client only: it is never printed, logged or put in an error message.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from trapkit.errors import TrapkitError
from trapkit.graph import HUB_FILES, ONNX_FILENAME, latest_changelog_entry

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
# owner/name as the Hub allows them: letters, digits, '-', '_', '.'; no '--' or '..', no leading/trailing '-' or '.'.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


@dataclass(frozen=True)
class HubRef:
    """`hf://owner/name@revision` split up; `revision=None` is the default branch."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HF_SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(model: str | os.PathLike) -> bool:
    return isinstance(model, str) and model.startswith(HF_SCHEME)


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.fullmatch(repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise TrapkitError(f"{repo_id!r} is not a Hub repo id; use owner/name (letters, digits, '-', '_', '.')")
    return repo_id


def parse_ref(ref: str) -> HubRef:
    """'hf://owner/name[@revision]' -> HubRef; a bad reference is a TrapkitError."""
    if not is_hub_ref(ref):
        raise TrapkitError(f"{ref!r} is not a Hub model reference; use hf://owner/name[@revision]")
    body = ref[len(HF_SCHEME):]
    repo_id, _, revision = body.partition("@")
    if "@" in body and not revision:
        raise TrapkitError(f"{ref!r} has an empty revision; use hf://owner/name@REVISION or drop the '@'")
    return HubRef(check_repo_id(repo_id), revision or None)


@dataclass(frozen=True)
class HubEnvironment:
    """Where the Hub and the cache are, read from the environment at call time."""

    endpoint: str
    cache_dir: Path
    offline: bool

    @classmethod
    def from_env(cls) -> HubEnvironment:
        env = os.environ
        home = Path(os.path.expandvars(os.path.expanduser(
            env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))))
        cache = Path(os.path.expanduser(env["HF_HUB_CACHE"])) if env.get("HF_HUB_CACHE") else home / "hub"
        offline = (env.get("HF_HUB_OFFLINE") or "").strip().upper() in ("1", "ON", "YES", "TRUE")
        return cls((env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"), cache, offline)


def _token(token_env: str) -> str:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise TrapkitError(f"no Hub token in ${token_env}; create a write token on the Hub (Settings > Access Tokens) "
                           f"and export {token_env}=... (or pass --token-env NAME)")
    return token


def _hub_error(e: Exception, what: str, settings: HubEnvironment, token_env: str | None = None) -> TrapkitError:
    """One-line TrapkitError for a huggingface_hub/httpx failure. Never includes request headers."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, RevisionNotFoundError):
        return TrapkitError(f"{what}: revision not found; check the part after '@' (a branch, tag or commit)")
    if isinstance(e, RepositoryNotFoundError):
        hint = f" or ${token_env} cannot see it" if token_env else " (or it is private: export HF_TOKEN)"
        return TrapkitError(f"{what}: repo not found on {settings.endpoint}{hint}; check the owner/name")
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return TrapkitError(f"{what}: not in the local cache ({settings.cache_dir}) and the Hub at {settings.endpoint} "
                            "cannot be reached (or HF_HUB_OFFLINE=1); connect once to download it")
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status in (401, 403):
            return TrapkitError(f"{what}: the Hub refused the token in ${token_env or 'HF_TOKEN'} (HTTP {status}); "
                                "use a token with write access to this owner")
        return TrapkitError(f"{what}: the Hub answered HTTP {status}; try again later")
    return TrapkitError(f"{what}: cannot reach the Hub at {settings.endpoint} ({e.__class__.__name__}); "
                        "check the network or HF_ENDPOINT")


def hub_folder_files(folder: str | Path) -> list[Path]:
    """The files to upload from a Hub folder: every plain, non-hidden file; model.onnx and config.json required."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrapkitError(f"{folder} is not a folder; write a Hub folder with trapkit export --hub-folder DIR")
    missing = [n for n in HUB_FILES[:2] if not (folder / n).is_file()]
    if missing:
        raise TrapkitError(f"{folder} is not a Hub folder (no {', '.join(missing)}); "
                           "write one with trapkit export --hub-folder DIR")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def publish(folder: str | Path, repo_id: str, private: bool = False, token_env: str = "HF_TOKEN") -> str:
    """Create `repo_id` if needed and upload the Hub folder in one commit; returns the repo URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    check_repo_id(repo_id)
    files = hub_folder_files(folder)
    token = _token(token_env)
    settings = HubEnvironment.from_env()
    if settings.offline:
        raise TrapkitError("HF_HUB_OFFLINE is set; unset it to publish to the Hub")
    api = HfApi(endpoint=settings.endpoint, token=token)
    what = f"publishing to {repo_id}"
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        log.info("uploading %d files (%s) to %s", len(files), ", ".join(p.name for p in files), repo_url)
        ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
        entry = latest_changelog_entry(Path(folder))  # this export's change report: the revision's message
        title, description = entry if entry else (f"Upload {Path(folder).name} with trapkit", "")
        commit = api.create_commit(repo_id, ops, commit_message=title, commit_description=description or None,
                                   repo_type="model")
    except Exception as e:  # narrowed by _hub_error into one user-facing line
        if isinstance(e, TrapkitError):
            raise
        log.debug("Hub error while %s: %s", what, e.__class__.__name__)
        raise _hub_error(e, what, settings, token_env) from None
    log.info("published %s at commit %s", repo_id, commit.oid)
    return str(repo_url)


def resolve_model(ref: str) -> Path:
    """Download `hf://owner/name[@revision]` into the Hugging Face cache; returns the snapshot folder."""
    from huggingface_hub import snapshot_download

    hub_ref = parse_ref(ref)
    settings = HubEnvironment.from_env()
    token = os.environ.get("HF_TOKEN") or None  # read access to private repos; never logged
    try:
        folder = snapshot_download(hub_ref.repo_id, revision=hub_ref.revision, repo_type="model",
                                   cache_dir=settings.cache_dir, endpoint=settings.endpoint, token=token,
                                   local_files_only=settings.offline)
    except Exception as e:  # narrowed by _hub_error into one user-facing line
        log.debug("Hub error while loading %s: %s", hub_ref, e.__class__.__name__)
        raise _hub_error(e, f"loading {hub_ref}", settings) from None
    folder = Path(folder)
    if not (folder / ONNX_FILENAME).is_file():
        raise TrapkitError(f"{hub_ref} has no {ONNX_FILENAME}; publish a trapkit export with trapkit publish")
    log.info("%s -> %s", hub_ref, folder)
    return folder
