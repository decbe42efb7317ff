"""The wheel installs every module and the bundled data; the Dockerfile installs the checked-out code."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True)
    (whl,) = out.glob("trapkit-*.whl")
    return whl


@pytest.mark.slow
def test_every_module_imports_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
        names = z.namelist()
    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py"))
    modules += [n.split(".")[0].replace("/", ".") for n in names if n.endswith(".so")]  # the compiled parts
    assert {"trapkit._jpeg_region", "trapkit._resample"} <= set(modules)
    assert {"trapkit.app.cli", "trapkit.train.model", "trapkit.export.cli", "trapkit.serve.cli"} <= set(modules)
    assert "trapkit/data/camera-traps/md_v5a_detections.json" in names
    assert sum(n.startswith("trapkit/data/camera-traps/") and n.endswith(".jpg") for n in names) == 10
    assert {f"trapkit/static/grid.{x}" for x in ("html", "js", "css")} <= set(names)  # the review and label page
    # Import from the unpacked wheel only: the repo is not on the path (cwd is tmp_path, PYTHONPATH first).
    code = (
        "import importlib, sys, pathlib\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "import trapkit\n"
        "print(pathlib.Path(trapkit.__file__).resolve())\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith(str(site.resolve()))


def test_dockerfile_installs_the_checked_out_code():
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    steps = [(s["instruction"], s["value"]) for s in parser.structure if s["instruction"] != "COMMENT"]
    instructions = [i for i, _ in steps]
    assert instructions[0] == "FROM"
    for instruction, value in steps:
        if instruction == "COPY":
            *sources, _dest = value.split()
            for src in sources:
                if not src.startswith("--"):
                    assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    installs = [v for i, v in steps if i == "RUN" and "pip install" in v]
    assert installs and all("trapkit==" not in v for v in installs)  # never a registry copy
    assert any('".[serve,video,triton,demo,hub]"' in v or "'.[serve,video,triton,demo,hub]'" in v for v in installs)
    users = [v for i, v in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [v for i, v in steps if i == "ENTRYPOINT"][-1].replace(" ", "") == '["trapkit"]'
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


BLOCK_TRAINING_STACK = """
import sys
class _NoTrainingStack:  # the serving image installs no torch: prove the serving path never imports it
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):
            raise ImportError('the serving image has no ' + name)
sys.meta_path.insert(0, _NoTrainingStack())
from trapkit.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_classify_runs_without_the_training_stack(tmp_path, tiny_onnx_path, samples_dir):
    out = tmp_path / "out.json"
    args = ["classify", str(samples_dir), "--model", str(tiny_onnx_path),
            "--detections", str(samples_dir / "md_v5a_detections.json"), "--out", str(out)]
    p = subprocess.run([sys.executable, "-c", BLOCK_TRAINING_STACK, *args], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.is_file() and "classification_categories" in out.read_text()
