"""A small in-memory Hugging Face Hub on 127.0.0.1 for the real `huggingface_hub` client.

Implements the routes the client calls to publish and load a model repo:
create repo, preupload (always answers `"uploadMode": "regular"`, so files
travel base64-encoded inside the commit), commit (NDJSON), model info and
revision, tree listing, and resolve (HEAD/GET with `X-Repo-Commit`, `ETag`,
`Content-Length`). The large-file path (LFS and Xet uploads) is NOT
implemented: the real Hub takes big files that way, this server never asks
for it. Private repos answer 404 (as the Hub does) to requests without the
token the server was started with. Every request is recorded in
`HubServer.requests` (method, path, Authorization header) for tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_ID = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"


def git_blob_oid(data: bytes) -> str:
    """The git sha1 of a blob: the Hub's ETag and tree `oid` for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubState:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    def commit(self, repo: Repo, branch: str, files: dict[str, bytes | None], message: str) -> Commit:
        parent = repo.resolve(branch)
        tree = dict(parent.files) if parent else {}
        for path, data in files.items():
            if data is None:
                tree.pop(path, None)
            else:
                tree[path] = data
        oid = hashlib.sha1(f"{repo.repo_id}{uuid.uuid4()}".encode()).hexdigest()
        commit = Commit(oid, tree, message, time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer  # with .state (HubState) and .endpoint (str)
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; requests are recorded in state.requests
        pass

    def setup(self):
        super().setup()
        with self.server.conn_lock:  # type: ignore[attr-defined]
            self.server.conns.add(self.connection)  # type: ignore[attr-defined]

    def finish(self):
        with self.server.conn_lock:  # type: ignore[attr-defined]
            self.server.conns.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    # -- helpers -------------------------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state  # type: ignore[attr-defined]

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status, headers)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
        """The repo if it exists and this request may see it; else sends the error and returns None."""
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        if write and not self._authorized():
            self._error(401, "Invalid credentials in Authorization header")
            return None
        return repo

    def _repo_commit(self, repo_id: str, rev: str) -> tuple[Repo, Commit] | None:
        """The repo and the commit `rev` names, if both exist and are visible; else sends the error."""
        repo = self._repo(repo_id)
        if repo is None:
            return None
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return None
        return repo, commit

    # -- dispatch ------------------------------------------------------------------------------

    ROUTES = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/agent-harnesses", "agent_harnesses"),
        ("GET", rf"/api/models/{REPO_ID}(?:/revision/{REV})?", "model_info"),
        ("GET", rf"/api/models/{REPO_ID}/tree/{REV}(?:/(?P<path>.*))?", "tree"),
        ("POST", rf"/api/models/{REPO_ID}/preupload/{REV}", "preupload"),
        ("POST", rf"/api/models/{REPO_ID}/commit/{REV}", "commit"),
        ("HEAD", rf"/{REPO_ID}/resolve/{REV}/(?P<path>.+)", "resolve"),
        ("GET", rf"/{REPO_ID}/resolve/{REV}/(?P<path>.+)", "resolve"),
    ]

    def _dispatch(self):
        url = urlsplit(self.path)
        with self.state.lock:
            self.state.requests.append((self.command, self.path, self.headers.get("Authorization")))
        for method, pattern, name in self.ROUTES:
            m = re.fullmatch(pattern, url.path)
            if method == self.command and m:
                with self.state.lock:
                    return getattr(self, name)(**m.groupdict(), query=parse_qs(url.query))
        self._error(404, f"no route {self.command} {url.path} in the test Hub")

    do_GET = do_POST = do_HEAD = _dispatch

    # -- routes --------------------------------------------------------------------------------

    def create_repo(self, query):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        body = json.loads(self._body() or b"{}")
        if body.get("type", "model") != "model":
            return self._error(400, "the test Hub only hosts model repos")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if not re.fullmatch(REPO_ID, repo_id):
            return self._error(400, f"invalid repo name {repo_id!r}")
        url = f"{self.server.endpoint}/{repo_id}"  # type: ignore[attr-defined]
        if repo_id in self.state.repos:
            return self._json({"error": "You already created this model repo", "url": url}, 409)
        # Newer clients send "visibility": "private"; older ones "private": true.
        repo = Repo(repo_id, body.get("visibility") in ("private", "protected") or bool(body.get("private")))
        self.state.repos[repo_id] = repo
        self.state.commit(repo, "main", {".gitattributes": b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"},
                          "initial commit")
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, query):
        self._body()
        return self._json({"errors": [], "warnings": []})

    def agent_harnesses(self, query):
        return self._json({"standardEnvVars": [], "harnesses": {}})

    def model_info(self, repo, rev=None, query=None):
        found = self._repo_commit(repo, rev or "main")
        if found is None:
            return
        r, commit = found
        return self._json({
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
            "author": repo.split("/")[0],
            "sha": commit.oid, "lastModified": commit.date, "createdAt": commit.date, "private": r.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "library_name": "onnx",
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def tree(self, repo, rev, path=None, query=None):
        found = self._repo_commit(repo, rev)
        if found is None:
            return
        _, commit = found
        prefix = (path or "").strip("/")
        recursive = (query or {}).get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, dirs = [], set()
        for p in sorted(commit.files):
            if prefix and not p.startswith(prefix + "/"):
                continue
            rest = p[len(prefix) + 1:] if prefix else p
            parts = rest.split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                d = "/".join(([prefix] if prefix else []) + parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    oid = hashlib.sha1(d.encode()).hexdigest()
                    entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
            if recursive or len(parts) == 1:
                data = commit.files[p]
                entries.append({"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": p})
        if prefix and not entries:
            return self._error(404, f"{prefix} does not exist", "EntryNotFound")
        return self._json(entries)

    def preupload(self, repo, rev, query=None):
        r = self._repo(repo, write=True)
        if r is None:
            return
        body = json.loads(self._body() or b"{}")
        commit = r.resolve(rev)
        files = []
        for f in body.get("files", []):
            old = commit.files.get(f["path"]) if commit else None
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_oid(old) if old is not None else None})
        return self._json({"files": files, "commitOid": commit.oid if commit else None})

    def commit(self, repo, rev, query=None):
        r = self._repo(repo, write=True)
        if r is None:
            return
        branch = unquote(rev)
        summary, changes = "", {}
        for line in self._body().decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and parent != r.branches.get(branch):
                    return self._error(412, "parent commit is not the head of the branch")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    return self._error(400, "the test Hub takes base64 file content only")
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
            else:
                return self._error(400, f"the test Hub does not implement {key!r} (large-file) commits")
        commit = self.state.commit(r, branch, changes, summary)
        endpoint = self.server.endpoint  # type: ignore[attr-defined]
        return self._json({"success": True, "commitOid": commit.oid, "commitMessage": summary,
                           "commitUrl": f"{endpoint}/{repo}/commit/{commit.oid}", "pullRequestUrl": None})

    def resolve(self, repo, rev, path, query=None):
        found = self._repo_commit(repo, rev)
        if found is None:
            return
        _, commit = found
        data = commit.files.get(unquote(path))
        if data is None:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"', "Accept-Ranges": "bytes",
                   "Last-Modified": formatdate(usegmt=True)}
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if rng and self.command == "GET":  # resumed download
            start = int(rng.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, data[start:], headers, "application/octet-stream")
        return self._send(200, data, headers, "application/octet-stream")


class HubServer:
    """`with HubServer(token) as hub:` serves on `hub.endpoint` until the block ends."""

    def __init__(self, token: str, port: int = 0):
        self.state = HubState(token)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.httpd.state = self.state  # type: ignore[attr-defined]
        self.httpd.endpoint = self.endpoint  # type: ignore[attr-defined]
        self.httpd.conns, self.httpd.conn_lock = set(), threading.Lock()  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        return self.state.requests

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        # Keep-alive connections would go on being served by their threads: cut them, like a Hub going down.
        with self.httpd.conn_lock:  # type: ignore[attr-defined]
            for conn in list(self.httpd.conns):  # type: ignore[attr-defined]
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
