"""int8 graph surgery: normalisation folded into the stem conv, which then reads the uint8 pixels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trapkit.export.onnx_export import ort_session, run_session
from trapkit.graph import INPUT_NAME
from trapkit.export.quantize import to_int8
from trapkit.export.raw_pixels import fold_normalisation_into_stem


def _stem_graph(mean, std, pads=(1, 1, 1, 1), bias=True, size=8) -> onnx.ModelProto:
    """images (N, size, size, 3) uint8 -> Transpose -> Cast -> Sub -> Div -> Conv(4 x 3 x 3 x 3) -> out."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1), "mean"),
             numpy_helper.from_array(np.asarray(std, np.float32).reshape(1, 3, 1, 1), "std"),
             numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    conv_inputs = ["norm", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["nchw"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["pixels", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["norm"]),
             helper.make_node("Conv", conv_inputs, ["out"], kernel_shape=[3, 3], pads=list(pads))]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8,
                                                                            ["n", size, size, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(proto, images):
    return ort_session(proto.SerializeToString()).run(None, {INPUT_NAME: images})[0]


@pytest.mark.parametrize("mean, bias", [((120.0, 100.0, 80.0), True), ((128.0, 128.0, 128.0), False)])
def test_fold_is_exact_border_included(mean, bias):
    """Integer means: padding with them is exact, so folded and original agree to float precision everywhere."""
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    original = _stem_graph(mean, (58.0, 57.0, 57.5), bias=bias)
    folded = onnx.ModelProto()
    folded.CopyFrom(original)
    assert fold_normalisation_into_stem(folded, INPUT_NAME) == "pixels"
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Sub" not in ops and "Div" not in ops
    assert ops.count("Pad") == (1 if len(set(mean)) == 1 else 3)  # one grey, or one Pad per channel
    expected, got = _run(original, images), _run(folded, images)
    assert got.shape == expected.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def _sub_feeds_conv(proto):
    proto.graph.node.remove(next(n for n in proto.graph.node if n.op_type == "Div"))
    next(n for n in proto.graph.node if n.op_type == "Sub").output[0] = "norm"


def _auto_pad(proto):
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    conv.attribute.remove(next(a for a in conv.attribute if a.name == "pads"))
    conv.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))


def _mean_along_width(proto):
    mean = next(t for t in proto.graph.initializer if t.name == "mean")
    mean.CopyFrom(numpy_helper.from_array(np.array([120, 100, 80], np.float32).reshape(1, 1, 1, 3), "mean"))


@pytest.mark.parametrize("change", [_sub_feeds_conv, _auto_pad, _mean_along_width])
def test_fold_leaves_other_graphs_alone(change):
    """No Sub-Div pair, a stem that pads by itself, a 'mean' that is not per channel: not folded, not touched."""
    proto = _stem_graph((120.0, 100.0, 80.0), (58.0, 57.0, 57.5), size=3)
    change(proto)
    before = proto.SerializeToString()
    assert fold_normalisation_into_stem(proto, INPUT_NAME) is None
    assert proto.SerializeToString() == before


def test_int8_stem_reads_uint8_pixels(tiny_onnx_path, samples_dir):
    """The trapkit graph (per-channel ImageNet mean, padded stem) with every conv quantised (`exclude=()`;
    by default the stem stays float): no Cast, Sub, Div or QuantizeLinear between the input and the stem;
    its DequantizeLinear reads the padded uint8 pixels."""
    from trapkit.export.calibration import calibration_images
    from trapkit.graph import read_spec

    spec = read_spec(tiny_onnx_path)
    images = calibration_images(spec)  # (25, 32, 32, 3) uint8
    fp32 = tiny_onnx_path.read_bytes()
    proto = onnx.load_from_string(to_int8(fp32, spec, images, exclude=()))
    nodes = {o: n for n in proto.graph.node for o in n.output}
    stem = next(n for n in proto.graph.node if n.op_type == "Conv")
    dequant = nodes[stem.input[0]]
    assert dequant.op_type == "DequantizeLinear" and nodes[dequant.input[0]].op_type == "Concat"  # per-channel pads
    chain, tensor = [], dequant.input[0]
    while tensor != INPUT_NAME:  # back to the input through uint8 layout ops only
        node = nodes[tensor]
        chain.append(node.op_type)
        tensor = node.input[0]
    assert set(chain) <= {"Concat", "Pad", "Split", "Transpose"}
    ref, _ = run_session(ort_session(fp32), images)
    probs, _ = run_session(ort_session(proto.SerializeToString()), images)
    assert np.mean(ref.argmax(1) == probs.argmax(1)) >= 0.99
