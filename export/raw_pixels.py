"""Graph surgery for int8: the first convolution reads the uint8 pixels themselves.

The fp32 graph normalises before its stem convolution:

    images (N, S, S, 3) uint8 -> Transpose -> Cast -> Sub(mean) -> Div(std) -> Conv(W, b, pads)

Quantised as it stands, onnxruntime's layout pass moves the Transpose below
the Sub and Div, which then broadcast a 3-vector over the innermost axis, its
slow path: on Lite0 they took 22% of the int8 graph's time (50 ms of 225 at
batch 32) against 1.5% of the fp32 graph's. And the normalised pixels get
re-quantised onto a grid that is not their own.

Convolution is linear, so the normalisation folds into the stem:

    conv(W, (x - m) / s) + b  =  conv(W / s, x) + (b - sum(W * m / s))

with one catch at the border: the stem pads normalised zeros, which are raw
pixels of value `m`. `fold_normalisation_into_stem` pads the uint8 pixels
explicitly with `round(m)` per channel (at most half a grey level off, on
the padded border only) and leaves the Conv unpadded. Quantised with scale 1
and zero point 0 on that tensor (`PIXEL_QUANT_OVERRIDE`), the pixels are
their own int8 encoding, so `read_pixels_directly` drops the Cast and
QuantizeLinear: the stem's DequantizeLinear reads the padded uint8 tensor.

A graph without this pattern is left as it is (the int8 export still works,
just without the shortcut).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

PREFIX = "trapkit_raw_pixels"
# Quantisation parameters that make uint8 pixels their own int8 encoding.
PIXEL_SCALE, PIXEL_ZERO_POINT = np.float32(1.0), np.uint8(0)


def pixel_quant_override(pixels: str) -> dict:
    """`TensorQuantOverrides` for quantize_static: `pixels` quantised with scale 1, zero point 0."""
    return {pixels: [{"scale": np.array(PIXEL_SCALE), "zero_point": np.array(PIXEL_ZERO_POINT)}]}


def fold_normalisation_into_stem(proto, input_name: str) -> str | None:
    """Fold Sub(mean)/Div(std) into the stem Conv in place; the name of the Cast output that now
    feeds the Conv with raw pixel values (float), or None when the graph has another shape."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}

    def sole_consumer(tensor: str, op: str):
        users = [n for n in graph.node if tensor in n.input and n.op_type != "Shape"]  # Shape reads no values
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    transpose = sole_consumer(input_name, "Transpose")
    cast = transpose and sole_consumer(transpose.output[0], "Cast")
    sub = cast and sole_consumer(cast.output[0], "Sub")
    div = sub and sole_consumer(sub.output[0], "Div")
    conv = div and sole_consumer(div.output[0], "Conv")
    if conv is None or not all(name in weights for name in (sub.input[1], div.input[1], *conv.input[1:])):
        log.debug("int8: no Transpose-Cast-Sub-Div-Conv at the input; normalisation left in the graph")
        return None

    w = numpy_helper.to_array(weights[conv.input[1]]).astype(np.float64)  # (O, C, kh, kw)
    channels = w.shape[1]
    mean, std = (numpy_helper.to_array(weights[node.input[1]]).astype(np.float64) for node in (sub, div))
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or \
            not all(v.size == 1 or v.shape[-3:] == (channels, 1, 1) for v in (mean, std)):
        log.debug("int8: stem conv grouped, auto-padded or normalised along another axis; left as it is")
        return None
    mean = np.broadcast_to(mean.reshape(-1), (channels,))  # per channel, or one value for all
    std = np.broadcast_to(std.reshape(-1), (channels,))
    bias = (numpy_helper.to_array(weights[conv.input[2]]).astype(np.float64) if len(conv.input) > 2
            else np.zeros(w.shape[0]))
    w_raw = w / std[None, :, None, None]
    bias_raw = bias - (w_raw * mean[None, :, None, None]).sum(axis=(1, 2, 3))
    graph.initializer.extend([numpy_helper.from_array(w_raw.astype(np.float32), f"{PREFIX}_stem_weight"),
                              numpy_helper.from_array(bias_raw.astype(np.float32), f"{PREFIX}_stem_bias")])

    pixels = transpose.output[0]  # (N, C, S, S) uint8
    new_nodes = []
    pads_attr = next((a for a in conv.attribute if a.name == "pads"), None)
    if pads_attr is not None and any(pads_attr.ints):
        pads, fill = list(pads_attr.ints), np.clip(np.round(mean), 0, 255).astype(np.uint8)
        half = len(pads) // 2  # ONNX Conv pads: begins then ends; Pad wants them for N and C too
        graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64), f"{PREFIX}_pads"))
        padded = f"{PREFIX}_padded"
        if len(set(fill.tolist())) == 1:  # one grey for every channel (Lite0: 127.5 -> 128)
            graph.initializer.append(numpy_helper.from_array(fill[0], f"{PREFIX}_fill"))
            new_nodes.append(helper.make_node("Pad", [pixels, f"{PREFIX}_pads", f"{PREFIX}_fill"], [padded],
                                              name=f"{PREFIX}_pad"))
        else:  # Pad takes one constant: split the channels, pad each with its own mean, join them
            parts = [f"{PREFIX}_channel{c}" for c in range(channels)]
            new_nodes.append(helper.make_node("Split", [pixels], parts, axis=1, num_outputs=channels,
                                              name=f"{PREFIX}_split"))
            for c, part in enumerate(parts):
                graph.initializer.append(numpy_helper.from_array(fill[c], f"{part}_fill"))
                new_nodes.append(helper.make_node("Pad", [part, f"{PREFIX}_pads", f"{part}_fill"], [f"{part}_padded"],
                                                  name=f"{part}_pad"))
            new_nodes.append(helper.make_node("Concat", [f"{p}_padded" for p in parts], [padded], axis=1,
                                              name=f"{PREFIX}_concat"))
        pixels = padded
        pads_attr.ints[:] = [0] * len(pads)

    cast.input[0] = pixels
    conv.input[0] = cast.output[0]
    conv.input[1] = f"{PREFIX}_stem_weight"
    if len(conv.input) > 2:
        conv.input[2] = f"{PREFIX}_stem_bias"
    else:
        conv.input.append(f"{PREFIX}_stem_bias")
    at = list(graph.node).index(cast)
    for k, node in enumerate(new_nodes):
        graph.node.insert(at + k, node)
    graph.node.remove(sub)
    graph.node.remove(div)
    _forget_shape(graph, cast.output[0])  # now (N, C, S + pad, S + pad)
    _drop_unused_initializers(graph)
    return cast.output[0]


def read_pixels_directly(proto, pixels: str) -> None:
    """After quantisation: the DequantizeLinear after `pixels` reads the uint8 tensor the Cast read
    (scale 1, zero point 0: the same values), and the Cast and QuantizeLinear go. In place."""
    from onnx import numpy_helper

    graph = proto.graph
    cast = next(n for n in graph.node if n.op_type == "Cast" and n.output[0] == pixels)
    (quant,) = [n for n in graph.node if pixels in n.input]
    dequants = [n for n in graph.node if quant.output[0] in n.input]
    assert quant.op_type == "QuantizeLinear" and all(d.op_type == "DequantizeLinear" for d in dequants)
    weights = {t.name: t for t in graph.initializer}
    scale, zero_point = (numpy_helper.to_array(weights[name]) for name in quant.input[1:3])
    # The override asked for exactly these; anything else would change the pixels' meaning.
    assert scale == PIXEL_SCALE and zero_point == PIXEL_ZERO_POINT and zero_point.dtype == np.uint8, (scale, zero_point)
    for dequant in dequants:
        dequant.input[0] = cast.input[0]
    graph.node.remove(quant)
    graph.node.remove(cast)
    _forget_shape(graph, pixels)
    _drop_unused_initializers(graph)


def _forget_shape(graph, tensor: str) -> None:
    for info in [v for v in graph.value_info if v.name == tensor]:
        graph.value_info.remove(info)


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
