"""int8 that a user can trust: backbone only, bias-corrected, measured on held-out images, per target."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_helpers import one_line_error
from train_helpers import FAST, make_trees

from trapkit.app.cli import main
from trapkit.errors import TrapkitError
from trapkit.export import quantize
from trapkit.export.calibration import calibration_images
from trapkit.export.onnx_export import ort_session, run_session
from trapkit.export.quantize import INT8_TARGETS, VariantSettings, to_int8
from trapkit.graph import INPUT_NAME, read_metadata, read_spec


@pytest.fixture(scope="module")
def int8_inputs(tiny_onnx_path):
    spec = read_spec(tiny_onnx_path)
    return tiny_onnx_path.read_bytes(), spec, calibration_images(spec)  # (23, 32, 32, 3) uint8


def _producers(proto):
    return {out: node for node in proto.graph.node for out in node.output}


def test_only_the_backbone_is_quantised_and_its_first_convs_stay_float(int8_inputs):
    fp32, spec, images = int8_inputs
    proto = onnx.load_from_string(to_int8(fp32, spec, images, target="vnni"))
    producer = _producers(proto)
    nodes = list(proto.graph.node)
    pool = max(i for i, n in enumerate(nodes) if n.op_type in quantize.POOLING_OPS)  # global pool (SE blocks
    # pool too, earlier)
    after = nodes[pool:]
    assert {"Gemm", "ReduceL2", "Softmax"} <= {n.op_type for n in after}
    assert not [n.name for n in after if n.op_type in ("QuantizeLinear", "DequantizeLinear")]  # projection, L2,
    # head and softmax read float tensors and float weights
    convs = [n for n in nodes if n.op_type == "Conv"]
    quantised = [producer.get(c.input[1]) is not None and producer[c.input[1]].op_type == "DequantizeLinear"
                 for c in convs]
    assert quantised[:quantize.FLOAT_CONVS] == [False] * quantize.FLOAT_CONVS
    # The tiny test backbone has squeeze-excitation: its 1x1 convs on pooled (N, C, 1, 1) maps are Convs too.
    assert all(q for c, q in zip(convs[quantize.FLOAT_CONVS:], quantised[quantize.FLOAT_CONVS:]))
    assert read_metadata_of(proto)[quantize.INT8_TARGET_PROP] == "vnni"


def read_metadata_of(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


@pytest.mark.parametrize("target, span", [("vnni", (250, 254)), ("gpu", (250, 254)), ("avx2", (120, 128))])
def test_weights_are_8_bit_where_the_target_multiplies_them_without_overflow(int8_inputs, target, span):
    """avx2 (u8 x s8 pairs summed into saturating int16) gets 7-bit weights; vnni and gpu all 8 bits."""
    fp32, spec, images = int8_inputs
    proto = onnx.load_from_string(to_int8(fp32, spec, images, target=target))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    spans = [int(weights[n.input[0]].max()) - int(weights[n.input[0]].min()) for n in proto.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")]
    assert spans and span[0] <= max(spans) <= span[1]  # 8 bits: -127..127; 7 bits: -64..64
    if target == "gpu":  # TensorRT: activations int8 with zero point 0
        zero_points = [weights[n.input[2]] for n in proto.graph.node
                       if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in weights]
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_bias_correction_removes_the_mean_error_of_rounded_weights():
    """One stem conv on uint8 pixels (read exactly as int8): its only error is the rounded weights', whose
    mean over images the corrected bias gives back (the border, where the conv reads padding, aside)."""
    from test_export_raw_pixels import _stem_graph

    from trapkit.spec import ModelSpec

    spec = ModelSpec(arch="x", labels=("a", "b"), input_size=16)
    proto = _stem_graph((120.0, 100.0, 80.0), (60.0, 50.0, 40.0), size=16)
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(150, 40, (64, 16, 16, 3)), 0, 255).astype(np.uint8)  # a bright scene

    def mean_error(**options):
        int8 = to_int8(proto.SerializeToString(), spec, images[:32], target="avx2", exclude=(), **options)
        run = [ort_session(g).run(None, {INPUT_NAME: images[32:]})[0][:, :, 2:-2, 2:-2]  # (32, 4, 12, 12)
               for g in (proto.SerializeToString(), int8)]
        return np.abs((run[1] - run[0]).mean(axis=(0, 2, 3)))  # (4,) per output channel, on unseen images

    before, after = mean_error(bias_correction=False), mean_error(bias_correction=True)
    assert before.sum() > 0.1 and after.sum() < 0.2 * before.sum(), (before, after)  # measured: 0.46 -> 0.03


def test_the_machine_target_follows_the_cpu_flags():
    flags = quantize.cpu_flags()
    assert set(flags) <= set(quantize.CPU_FLAGS)
    expected = "vnni" if set(flags) & {"avx512_vnni", "avx_vnni", "amx_int8"} else "avx2"
    assert quantize.machine_int8_target() == expected and VariantSettings(quantize="int8").target == expected
    assert VariantSettings(quantize="int8", int8_target="gpu").target == "gpu"


def test_cli_choices_match_the_library():
    from trapkit.export import cli

    assert cli.INT8_TARGETS == INT8_TARGETS and cli.CALIBRATION_METHODS == quantize.CALIBRATION_METHODS
    defaults = VariantSettings()  # the defaults --help states
    assert (cli.DEFAULT_MIN_AGREEMENT, cli.DEFAULT_CALIBRATION_METHOD) == (defaults.min_agreement,
                                                                          defaults.calibration_method)


# -- export from a model folder and from a run folder -----------------------------------------------------

def test_int8_export_holds_both_graphs_and_says_where_agreement_was_measured(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(tiny_model_dir), "--out", str(out), "--quantize", "int8", "--int8-target", "avx2",
                 "--min-agreement", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.int8.onnx", "model.onnx"]
    assert read_metadata(out / "model.onnx")["trapkit.precision"] == "fp32"
    meta = read_metadata(out / "model.int8.onnx")
    assert meta["trapkit.precision"] == "int8" and meta[quantize.INT8_TARGET_PROP] == "avx2"
    report = json.loads((out / "export_report.json").read_text())
    assert report["graphs"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    agreement = report["agreement"]
    # Not a run folder: 30% of the 23 bundled calibration inputs are held out, the rest calibrate.
    assert agreement["images"] == 7 and agreement["calibration"]["inputs"] == 16
    assert agreement["measured_on"] == "held-out 7 of 23 calibration inputs from the bundled photos"
    assert agreement["accuracy"] is None and agreement["int8_target"] == "avx2"
    assert agreement["cpu_flags"] == list(quantize.cpu_flags())
    # A later fp32 export into the same folder removes the int8 graph: it would not match model.onnx.
    assert main(["export", str(tiny_model_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run after `al init`: random 32 px backbone, 3 classes, 9 validation images."""
    root = tmp_path_factory.mktemp("int8_run")
    trees = make_trees(root)
    run = root / "run"
    assert main(["al", "init", str(run), "--labelled", str(trees["labelled"]), "--unlabelled", str(trees["pool"]),
                 "--validation", str(trees["validation"]), *FAST]) == 0
    return run


def test_a_run_folder_is_measured_on_its_validation_images(trained_run, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(trained_run), "--out", str(out), "--quantize", "int8", "--min-agreement", "0"]) == 0
    agreement = json.loads((out / "export_report.json").read_text())["agreement"]
    assert agreement["measured_on"] == "the run's validation images (9)" and agreement["images"] == 9
    assert agreement["calibration"]["source"] == "the run's labelled and pool images"
    assert agreement["calibration"]["inputs"] == 12 + 24  # seed and pool images, never validation
    assert 0.0 <= agreement["accuracy"] <= 1.0 and 0.0 <= agreement["accuracy_fp32"] <= 1.0
    assert 0.0 <= agreement["flip_margin"] <= 1.0 and (agreement["flip_margin"] == 0.0) == (agreement["agreement"] == 1)
    # Its own accuracy figures, recomputed: the graphs against the validation labels.
    held = quantize.run_validation_images(trained_run, read_spec(out / "model.onnx"))
    probs, _ = run_session(ort_session(out / "model.int8.onnx"), held.images)
    ref, _ = run_session(ort_session(out / "model.onnx"), held.images)
    assert agreement["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == held.labels)))
    flipped = ref.argmax(1) != probs.argmax(1)
    lead = np.sort(ref, axis=1)[:, -1] - np.sort(ref, axis=1)[:, -2]
    assert agreement["flip_margin"] == pytest.approx(float(lead[flipped].max()) if flipped.any() else 0.0)


def test_a_calibration_folder_with_a_run_still_measures_on_validation(trained_run, tmp_path, samples_dir):
    out = tmp_path / "out"
    assert main(["export", str(trained_run), "--out", str(out), "--quantize", "int8", "--min-agreement", "0",
                 "--calibration", str(samples_dir)]) == 0
    agreement = json.loads((out / "export_report.json").read_text())["agreement"]
    assert agreement["measured_on"].startswith("the run's validation images")
    assert agreement["calibration"] == {"inputs": 23, "method": "entropy", "source": f"--calibration {samples_dir}"}


@pytest.mark.parametrize("flags, message", [
    (["--int8-target", "vnni"], "--int8-target only applies with --quantize int8"),
    (["--calibration-method", "entropy"], "--calibration-method only applies with --quantize int8"),
    (["--precision", "fp16", "--int8-target", "gpu"], "add --quantize int8"),
])
def test_int8_only_flags_without_int8(tiny_model_dir, tmp_path, capsys, flags, message):
    assert message in one_line_error(["export", str(tiny_model_dir), "--out", str(tmp_path / "o"), *flags], capsys)


def test_one_calibration_image_leaves_nothing_to_hold_out(tiny_model_dir, tmp_path, samples_dir, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "blank.jpg").write_bytes((samples_dir / "blank.jpg").read_bytes())
    err = one_line_error(["export", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--quantize", "int8",
                  "--calibration", str(folder)], capsys)
    assert "only 1 calibration input" in err and "nothing left to hold out" in err


def test_unknown_target_and_method_are_refused():
    with pytest.raises(TrapkitError, match="unknown --int8-target 'arm'"):
        VariantSettings(quantize="int8", int8_target="arm")
    with pytest.raises(TrapkitError, match="unknown --calibration-method 'mse'"):
        VariantSettings(quantize="int8", calibration_method="mse")


def test_int8_graph_batches_like_one_by_one(int8_inputs):
    fp32, spec, images = int8_inputs
    session = ort_session(to_int8(fp32, spec, images))
    whole = session.run(["probs"], {INPUT_NAME: images})[0]
    single = np.concatenate([session.run(["probs"], {INPUT_NAME: images[i:i + 1]})[0] for i in range(len(images))])
    np.testing.assert_allclose(whole, single, atol=1e-5)
