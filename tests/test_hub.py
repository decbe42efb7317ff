"""Publishing to and loading from the Hugging Face Hub with the real `huggingface_hub` client.

The client talks (HF_ENDPOINT) to the small Hub in tests/hub_server.py on
127.0.0.1: create repo, preupload, commit, model info, tree, resolve. Files
go up as regular (base64 in the commit) uploads; the large-file (LFS/Xet)
path is not exercised.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from hub_server import HubServer
from trapkit.app.cli import main
from trapkit.errors import TrapkitError

pytestmark = pytest.mark.slow
TOKEN = "hf_trapkitTestToken_4f9c2e7d1b"
HUB_FILES = ("model.onnx", "config.json", "README.md")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running test Hub; HF_ENDPOINT, HF_HOME (empty cache) and HF_TOKEN point at it."""
    for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    server = HubServer(TOKEN).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """(model.onnx, Hub folder) of the tiny model, by `trapkit export --hub-folder`."""
    out = tmp_path_factory.mktemp("export")
    assert main(["export", str(tiny_model_dir), "--out", str(out / "onnx"), "--hub-folder", str(out / "hub")]) == 0
    return out / "onnx" / "model.onnx", out / "hub"


@pytest.fixture(scope="module")
def hub_folder(exported):
    assert sorted(p.name for p in exported[1].iterdir()) == sorted(HUB_FILES)
    return exported[1]


@pytest.fixture(scope="module")
def onnx_path(exported):
    return exported[0]


def _publish(folder, repo_id, *extra) -> int:
    return main(["publish", str(folder), "--repo-id", repo_id, *extra])


def test_publish_then_load_is_byte_exact(hub, hub_folder, capsys):
    from trapkit.serve.hub import resolve_model

    assert _publish(hub_folder, "alice/tiny") == 0
    assert f"{hub.endpoint}/alice/tiny" in capsys.readouterr().out
    local = resolve_model("hf://alice/tiny")
    for name in HUB_FILES:
        assert (local / name).read_bytes() == (hub_folder / name).read_bytes(), name
    # One commit with every file inline (regular upload), none through the large-file routes.
    commits = [p for m, p, _ in hub.requests if m == "POST" and "/commit/" in p]
    assert commits == ["/api/models/alice/tiny/commit/main"]
    assert not any("lfs" in p or "xet" in p for _, p, _ in hub.requests)


def test_classify_with_a_hub_model(hub, hub_folder, onnx_path, samples_dir, tmp_path):
    from trapkit.export.onnx_export import bundled_parity_images
    from trapkit.serve.runtime import OnnxRuntime, open_runtime

    assert _publish(hub_folder, "alice/tiny") == 0
    with open_runtime("hf://alice/tiny") as remote, OnnxRuntime(onnx_path) as local:
        photos = bundled_parity_images(local.spec)
        assert remote.spec == local.spec
        np.testing.assert_array_equal(remote.predict(photos), local.predict(photos))
    assert main(["classify", str(samples_dir), "--model", "hf://alice/tiny", "--out", str(tmp_path / "out.json")]) == 0


def test_revisions_and_updates(hub, hub_folder, tmp_path):
    from trapkit.serve.hub import resolve_model

    assert _publish(hub_folder, "alice/tiny") == 0
    first = resolve_model("hf://alice/tiny").name  # the snapshot folder is named by commit
    updated = tmp_path / "updated"
    shutil.copytree(hub_folder, updated)
    (updated / "README.md").write_text("# tiny, second version\n")
    assert _publish(updated, "alice/tiny") == 0  # the repo exists: a new commit on main
    assert (resolve_model("hf://alice/tiny") / "README.md").read_text() == "# tiny, second version\n"
    pinned = resolve_model(f"hf://alice/tiny@{first}")
    assert (pinned / "README.md").read_bytes() == (hub_folder / "README.md").read_bytes()
    with pytest.raises(TrapkitError, match="revision not found"):
        resolve_model("hf://alice/tiny@v9")


def test_loads_offline_from_the_cache(hub, hub_folder, monkeypatch):
    from trapkit.serve.hub import resolve_model

    assert _publish(hub_folder, "alice/tiny") == 0
    online = resolve_model("hf://alice/tiny")
    hub.stop()  # no network: the cached snapshot answers
    assert resolve_model("hf://alice/tiny") == online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("hf://alice/tiny") == online
    assert (online / "model.onnx").read_bytes() == (hub_folder / "model.onnx").read_bytes()
    with pytest.raises(TrapkitError, match=r"not in the local cache .* cannot be reached \(or HF_HUB_OFFLINE=1\)"):
        resolve_model("hf://alice/never-downloaded")


def test_no_network_and_no_cache_is_one_line_error(hub, monkeypatch, tmp_path, capsys):
    hub.stop()
    code = main(["classify", str(tmp_path), "--model", "hf://alice/tiny", "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("trapkit: error: loading hf://alice/tiny: not in the local cache")


def test_private_repo_needs_the_token(hub, hub_folder, monkeypatch):
    from trapkit.serve.hub import resolve_model

    assert _publish(hub_folder, "alice/secret", "--private") == 0
    assert hub.state.repos["alice/secret"].private
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(hub_folder.parent / "other_home"))  # nothing cached
    with pytest.raises(TrapkitError, match="repo not found"):
        resolve_model("hf://alice/secret")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert (resolve_model("hf://alice/secret") / "config.json").is_file()


@pytest.mark.parametrize("ref, message", [
    ("hf://alice/missing", "repo not found on"),
    ("hf://alice", "is not a Hub repo id; use owner/name"),
    ("hf://alice/bad name", "is not a Hub repo id"),
    ("hf://alice/a--b", "is not a Hub repo id"),
    ("hf://alice/tiny@", "has an empty revision"),
])
def test_bad_references(hub, ref, message):
    from trapkit.serve.hub import resolve_model

    with pytest.raises(TrapkitError, match=message):
        resolve_model(ref)


def test_publish_errors(hub, hub_folder, tmp_path, monkeypatch, capsys):
    def error(*args) -> str:
        assert _publish(*args) == 1
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "is not a Hub folder (no model.onnx, config.json)" in error(tmp_path, "alice/tiny")
    assert "is not a Hub repo id" in error(hub_folder, "not-an-id")
    assert "no Hub token in $MY_TOKEN" in error(hub_folder, "alice/tiny", "--token-env", "MY_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert "the Hub refused the token in $HF_TOKEN (HTTP 401)" in error(hub_folder, "alice/tiny")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.stop()
    assert f"cannot reach the Hub at {hub.endpoint}" in error(hub_folder, "alice/tiny")


def test_token_is_never_printed_or_logged(hub, hub_folder, caplog, capfd, monkeypatch):
    from trapkit.serve.hub import resolve_model

    monkeypatch.setenv("MY_TOKEN", TOKEN)
    monkeypatch.delenv("HF_TOKEN")
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "httpx", "httpcore", "trapkit"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    assert _publish(hub_folder, "alice/tiny", "--token-env", "MY_TOKEN", "-v") == 0
    resolve_model("hf://alice/tiny")
    monkeypatch.setenv("MY_TOKEN", "hf_wrong_" + TOKEN)  # a refused token must not leak through the error either
    assert _publish(hub_folder, "alice/tiny", "--token-env", "MY_TOKEN", "-v") == 1
    out, err = capfd.readouterr()
    assert caplog.records, "debug logging was captured"
    assert TOKEN not in caplog.text and TOKEN not in out and TOKEN not in err
    assert any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)  # it did reach the server
