"""The `trapkit` command: dispatch, fast help, one-line user errors with exit code 1."""

import os
import subprocess
import sys

import pytest

from trapkit.app.cli import COMMAND_MODULES, main

HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "gradio", "tritonclient", "huggingface_hub", "pandas",
         "pyarrow", "sklearn", "scipy", "matplotlib")


def test_help_imports_nothing_heavy():
    # `trapkit --help` must answer at once: building every parser may not import ML libraries.
    code = (
        "import sys; from trapkit.app.cli import build_parser; build_parser().format_help(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for command in ("quickstart", "al", "export", "classify", "features", "demo", "label", "publish"):
        assert command in text, command
    assert len(COMMAND_MODULES) >= 4


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def run_cli(args, tmp_path):
    """Run the real console entry point in a subprocess; return (code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "trapkit.app.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                       env=os.environ | {"PYTHONWARNINGS": "ignore"})
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(code, err, fragment):
    assert code == 1
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("trapkit: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


def test_quickstart_missing_folder(tmp_path):
    code, _, err = run_cli(["quickstart", "--images", str(tmp_path / "nowhere")], tmp_path)
    assert_one_line_error(code, err, "does not exist")


def test_quickstart_unknown_backbone(tmp_path):
    code, _, err = run_cli(["quickstart", "--backbone", "resnet_9000", "--weights", "none"], tmp_path)
    assert_one_line_error(code, err, "unknown backbone 'resnet_9000'")


def test_quickstart_bad_weight_file(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not torch")
    code, _, err = run_cli(["quickstart", "--backbone", "test_resnet", "--weights", str(tmp_path / "bad.pth")], tmp_path)
    assert_one_line_error(code, err, "could not be read")


def test_quickstart_unreadable_image_is_reported_and_others_still_classified(tmp_path, samples_dir):
    images = tmp_path / "photos"
    images.mkdir()
    (images / "ocelot.jpg").write_bytes((samples_dir / "ocelot.jpg").read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    code, out, err = run_cli(["quickstart", "--images", str(images), "--backbone", "test_resnet", "--weights", "none"], tmp_path)
    assert_one_line_error(code, err, "broken.jpg")
    assert "ocelot.jpg" in out  # the readable photo was still classified


def test_verbose_shows_the_traceback(tmp_path):
    code, _, err = run_cli(["quickstart", "-v", "--images", str(tmp_path / "nowhere")], tmp_path)
    assert code == 1 and "Traceback" in err and "trapkit: error:" in err
