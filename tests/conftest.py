"""Shared fixtures: tiny real models and the bundled camera-trap photos. Nothing here touches the network."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "trapkit" / "data" / "camera-traps"
TINY_LABELS = ("bear", "cattle", "dog", "elephant", "ocelot")


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt during the test, as Ctrl-C does in a terminal, also when the suite was
    started from a shell that ignores SIGINT (background jobs, some CI runners): Python then leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The ten bundled camera-trap photos and md_v5a_detections.json (read-only: copy before changing)."""
    return SAMPLES


@pytest.fixture
def samples_copy(tmp_path) -> Path:
    """A writable copy of the bundled photos and detections."""
    dst = tmp_path / "images"
    shutil.copytree(SAMPLES, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight trapkit model (spec.json + model.safetensors), 5 classes, 32 px input."""
    import torch

    from trapkit.spec import ModelSpec
    from trapkit.train.model import build_model, save_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="test_efficientnet", labels=TINY_LABELS, feat_dim=16, head_hidden=(12,), input_size=32,
                     name="tiny-test-model")
    model = build_model(spec, "none").eval()
    return save_model(tmp_path_factory.mktemp("tiny_model"), model)


@pytest.fixture(scope="session")
def tiny_onnx_path(tiny_model_dir, tmp_path_factory) -> Path:
    """`tiny_model_dir` exported by `trapkit.export` to one parity-checked model.onnx (read-only: copy before changing)."""
    from trapkit.export.onnx_export import export_onnx, load_source

    return export_onnx(load_source(tiny_model_dir), tmp_path_factory.mktemp("tiny_onnx") / "model.onnx").path


@pytest.fixture(scope="session")
def lite0_onnx_path(tmp_path_factory) -> Path:
    """The real offline ImageNet EfficientNet-Lite0 (1000 ImageNet labels) exported to model.onnx (read-only).

    A real feature extractor, for tests that need features to mean something (the tiny model's are random).
    """
    from trapkit.export.onnx_export import export_onnx
    from trapkit.train.model import imagenet_lite0

    return export_onnx(imagenet_lite0(), tmp_path_factory.mktemp("lite0_onnx") / "model.onnx").path
