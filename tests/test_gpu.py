"""The GPU path (`trapkit.gpu`, `trapkit.serve.gpu_classify`), run on CPU tensors: this machine has no GPU.

Everything but the device itself is the code a GPU runs: Pillow's resampling as tensor arithmetic (bit for
bit in float64, within one level in float32), the crop geometry, EXIF orientation, the preparer with its CPU
fallbacks (torchvision's CPU JPEG decoder standing in for nvJPEG), onnxruntime reading a tensor through I/O
binding, and the executor with its checkpoints. Tolerances against the CPU path are stated where they apply.
"""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
from PIL import Image, ImageOps

from classify_helpers import animal, write_detections
from trapkit.app.cli import main
from trapkit.machine import nvidia_gpu_present

torch = pytest.importorskip("torch")

# Mean difference per image of the GPU path's crops from the CPU path's, in levels of 255: the CPU path decodes
# at a reduced DCT scale (libjpeg's scaled IDCT), the GPU path box-averages a full decode (measured 0.0-1.0).
MEAN_TOLERANCE = 2.0


def _photo_rows(samples_dir, names=None):
    from trapkit.detections import load_detections, qualifying
    from trapkit.prepare import Preprocessing

    prep = Preprocessing(224)
    doc = load_detections(samples_dir / "md_v5a_detections.json")
    rows = [(samples_dir, doc["images"][i]["file"], [doc["images"][i]["detections"][j]["bbox"] for j in dets])
            for i, dets in qualifying(doc, prep.threshold, prep.categories).items()]
    return prep, [r for r in rows if names is None or r[1] in names]


def test_resize_is_pillows_arithmetic():
    from trapkit.gpu import resize
    from trapkit.images import PIL_FILTERS, REDUCING_GAP

    rng = np.random.default_rng(1)
    for trial in range(24):
        h, w = (int(v) for v in rng.integers(20, 500, 2))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        left, top = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        box = (left, top, rng.uniform(left + 1, w), rng.uniform(top + 1, h))
        size = int(rng.choice([7, 32, 224]))  # large downscales go through Pillow's reduce first
        for interpolation in ("bilinear", "bicubic"):
            want = np.asarray(Image.fromarray(pixels).resize((size, size), PIL_FILTERS[interpolation], box=box,
                                                              reducing_gap=REDUCING_GAP)).astype(int)
            exact = resize(torch.from_numpy(pixels.copy()), (size, size), box, interpolation, torch.float64)
            near = resize(torch.from_numpy(pixels.copy()), (size, size), box, interpolation, torch.float32)
            assert (exact.numpy() == want).all(), (trial, interpolation, box, size)
            assert np.abs(near.numpy().astype(int) - want).max() <= 1, (trial, interpolation)


def test_crops_and_whole_images_on_the_same_pixels_equal_the_cpu_code(samples_dir):
    from trapkit.crops import crop_square
    from trapkit.gpu import crop_squares, whole_image
    from trapkit.images import open_image, to_model_input

    img, _ = open_image(samples_dir / "ocelot.jpg")
    pixels = torch.from_numpy(np.asarray(img).copy())
    # A detector's box, boxes at every edge, one larger than the image (padded black), a sliver.
    boxes = [[0.3, 0.4, 0.2, 0.3], [0.0, 0.0, 0.1, 0.1], [0.9, 0.85, 0.1, 0.15], [-0.2, 0.5, 0.5, 0.6],
             [0.0, 0.0, 1.0, 1.0], [0.5, 0.1, 0.002, 0.3]]
    for interpolation in ("bilinear", "bicubic"):
        want = np.stack([crop_square(img, b, 96, 0.1, interpolation) for b in boxes])
        assert (crop_squares(pixels, boxes, 96, 0.1, interpolation).numpy() == want).all(), interpolation
    for mode in ("squash", "center_crop"):
        assert (whole_image(pixels, 64, mode).numpy()[0] == to_model_input(img, 64, mode)).all(), mode


def test_upright_follows_the_exif_orientation():
    from trapkit.gpu import upright

    stored = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        img = Image.fromarray(stored)
        exif = img.getexif()
        exif[0x0112] = orientation
        img.info["exif"] = exif.tobytes()
        want = np.asarray(ImageOps.exif_transpose(img))
        assert (upright(torch.from_numpy(stored), orientation).numpy() == want).all(), orientation


def test_the_preparer_stays_within_the_stated_tolerance_and_falls_back_to_the_cpu_path(samples_dir, tmp_path):
    from trapkit.gpu import DevicePreparer
    from trapkit.images import FAILURE_MISSING, FAILURE_UNREADABLE
    from trapkit.prepare import prepare_entry

    prep, rows = _photo_rows(samples_dir, {"domestic_dog.jpg", "ocelot.jpg", "african_elephants.jpg"})
    # The CPU path's own cases: a PNG (no device decoder), a truncated JPEG (decoded as far as it goes, with a
    # warning), a file that is no image, a missing file.
    with Image.open(samples_dir / "ocelot.jpg") as photo:
        photo.save(tmp_path / "ocelot.png")
    data = (samples_dir / "domestic_dog.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not a jpeg" * 10)
    box = [[0.3, 0.3, 0.3, 0.3]]
    odd = [(tmp_path, "ocelot.png", box), (tmp_path, "cut.jpg", box), (tmp_path, "junk.jpg", box),
           (tmp_path, "gone.jpg", box), (tmp_path, "../escape.jpg", box)]
    preparer = DevicePreparer(prep, "cpu", "torchvision")
    try:
        got = preparer.prepare(rows + odd)
    finally:
        preparer.close()
    for row, attempt in zip(rows, got):
        want = prepare_entry(*row, prep)
        assert attempt.failure is None and attempt.time == want.time
        assert isinstance(attempt.crops, torch.Tensor) and attempt.crops.shape == want.crops.shape
        diff = np.abs(attempt.crops.numpy().astype(int) - want.crops.astype(int))
        assert diff.mean() <= MEAN_TOLERANCE, (row[1], diff.mean())
    for row, attempt in zip(odd, got[len(rows):]):
        want = prepare_entry(*row, prep)
        assert (attempt.failure, attempt.warnings != [], attempt.time) == (want.failure, want.warnings != [],
                                                                           want.time), row[1]
        if want.crops is not None:
            assert (attempt.crops.numpy() == want.crops).all(), row[1]  # the CPU path's own crops
    assert [a.failure for a in got[len(rows) + 2:]] == [FAILURE_UNREADABLE, FAILURE_MISSING, "path outside image folder"]


def test_onnxruntime_reads_a_tensor_where_it_lies(tiny_onnx_path):
    from trapkit.serve.runtime import OnnxRuntime

    crops = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    with OnnxRuntime(tiny_onnx_path, threads=1) as runtime:
        np.testing.assert_array_equal(runtime.predict_device(torch.from_numpy(crops)), runtime.predict(crops))
        probs, embedding = runtime.predict_device(torch.from_numpy(crops), embedding=True)
        want_probs, want_embedding = runtime.predict(crops, embedding=True)
        np.testing.assert_array_equal(probs, want_probs)
        np.testing.assert_array_equal(embedding, want_embedding)


@pytest.mark.skipif(nvidia_gpu_present(), reason="this machine has a GPU")
def test_without_a_gpu_classify_decodes_on_the_cpu_and_gpu_is_one_line(samples_dir, tiny_onnx_path, tmp_path,
                                                                       capsys, caplog):
    import logging

    from trapkit.gpu import choose_decoder

    choice = choose_decoder("auto")
    assert (choice.decoder, choice.reason, choice.gpu_here) == (None, "no NVIDIA GPU here", False)
    argv = ["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--detections",
            str(samples_dir / "md_v5a_detections.json"), "--out", str(tmp_path / "out.json")]
    assert main([*argv, "--decode", "gpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("trapkit: error: --decode gpu cannot run here: no NVIDIA GPU here; leave out --decode gpu to "
                       "decode on the CPU")
    caplog.set_level(logging.DEBUG, logger="trapkit.serve.gpu_classify")
    assert main(argv) == 0  # auto: the CPU path, said at debug level only (no GPU to wonder about)
    assert "decoding on the CPU: no NVIDIA GPU here" in caplog.text
    assert not [r for r in caplog.records if r.name == "trapkit.serve.gpu_classify" and r.levelno >= logging.WARNING]
    assert main([*argv, "--decode", "gpu", "--ray", "local"]) == 1
    assert "--decode gpu does not apply with --ray" in capsys.readouterr().err


def test_the_gpu_executor_agrees_with_the_cpu_path_and_resumes_to_its_own_output(samples_dir, tiny_onnx_path,
                                                                                 tmp_path, monkeypatch):
    from trapkit.serve.classify import KILL_AFTER_ENV, KILL_SIGNAL_ENV, ClassifyPaths, classify_images
    from trapkit.serve.gpu_classify import GpuExecutor
    from trapkit.serve.runtime import open_runtime
    from trapkit.serve.settings import ClassifySettings

    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for k, name in enumerate(("ocelot.jpg", "domestic_cattle.jpg", "american_black_bear.jpg") * 3):
        shutil.copy(samples_dir / name, images / f"{k}-{name}")
        entries.append({"file": f"{k}-{name}", "detections": [animal((0.1 * (k % 3), 0.2, 0.4, 0.5)), animal()]})
    md = write_detections(tmp_path / "md.json", entries)
    settings = ClassifySettings(batch_size=4, checkpoint_every=4)
    out = {name: tmp_path / f"{name}.json" for name in ("cpu", "gpu", "resumed")}
    with open_runtime(tiny_onnx_path, threads=1) as runtime:
        classify_images(ClassifyPaths(images, out["cpu"], md), runtime, settings)
        classify_images(ClassifyPaths(images, out["gpu"], md), runtime, settings, executor=GpuExecutor(
            "torchvision", device="cpu", decode_batch=3))
        # Interrupted after 6 images (4 committed), then resumed: the same batches, so the same output.
        monkeypatch.setenv(KILL_AFTER_ENV, "6")
        monkeypatch.setenv(KILL_SIGNAL_ENV, "SIGINT")
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the shell did with SIGINT
        try:
            with pytest.raises(KeyboardInterrupt):
                classify_images(ClassifyPaths(images, out["resumed"], md), runtime, settings,
                                executor=GpuExecutor("torchvision", device="cpu", decode_batch=3))
        finally:
            signal.signal(signal.SIGINT, previous)
        monkeypatch.delenv(KILL_AFTER_ENV)
        checkpoint = tmp_path / "resumed.json.checkpoint.json"
        assert len(json.loads(checkpoint.read_text())["done"]) == 4
        classify_images(ClassifyPaths(images, out["resumed"], md), runtime, settings, resume=True,
                        executor=GpuExecutor("torchvision", device="cpu", decode_batch=3))
    docs = {name: json.loads(path.read_text()) for name, path in out.items()}
    for doc in docs.values():
        doc["info"].pop("classification_completion_time")
    assert docs["resumed"] == docs["gpu"]
    top = {name: [d["classifications"][0] for im in doc["images"] for d in im["detections"]]
           for name, doc in docs.items()}
    assert len(top["cpu"]) == 18
    assert [c for c, _ in top["gpu"]] == [c for c, _ in top["cpu"]]  # top-1 agrees on every crop
    assert max(abs(a - b) for (_, a), (_, b) in zip(top["gpu"], top["cpu"])) <= 0.05
