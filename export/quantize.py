"""Reduced-precision variants of an exported graph: fp16 and int8, each checked for top-1 agreement.

Both keep the graph's interface: uint8 `images` in, float32 `probs` and
`embedding` out, same metadata (plus `trapkit.precision`).

- fp16: weights and activations in half precision (`keep_io_types`), for GPUs;
  on a CPU onnxruntime runs most of it through casts and it is slower.
- int8: static QDQ quantisation (onnxruntime.quantization) with per-channel
  weights, calibrated on real images. Only Conv, Clip and Add are quantised:
  with Clip included the quantiser folds ReLU6 into the Conv output range
  (otherwise the Conv output gets its full pre-clip range and loses most of its
  levels); the pooling, head and softmax stay float32. The normalisation is
  folded into the stem conv first, which then reads the uint8 pixels as its
  int8 input (`trapkit.export.raw_pixels`: 1.33x -> 1.66x fp32 at batch 32 on Lite0).
  Weights are 7-bit (`reduce_range`): x86 CPUs without AVX-512 VNNI multiply
  u8 x s8 pairs into saturating int16, which wrecks full 8-bit weights
  (measured on Lite0: 56% top-1 agreement at 8 bits, 76% at 7). Dynamic
  quantisation (per-tensor ConvInteger) was slower than fp32 and less
  accurate; uint8 weights were more accurate (96%) but 5x slower than fp32,
  for lack of a fused kernel, so neither is offered.

A variant is compared with the fp32 graph on the calibration images; int8 is
refused when top-1 agreement falls below `min_agreement`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trapkit.errors import TrapkitError
from trapkit.export.raw_pixels import fold_normalisation_into_stem, pixel_quant_override, read_pixels_directly
from trapkit.spec import ModelSpec

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("int8",)
INT8_OPS = ["Conv", "Clip", "Add"]
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class VariantSettings:
    """Which graph to write. `calibration`: a folder of photos (+ MegaDetector JSON); None = bundled photos."""

    precision: str = "fp32"
    quantize: str | None = None
    calibration: Path | None = None
    min_agreement: float = 0.99

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise TrapkitError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise TrapkitError(f"unknown quantisation {self.quantize!r}; use int8")
        if self.quantize and self.precision != "fp32":
            raise TrapkitError("--precision fp16 and --quantize int8 exclude each other; pick one")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise TrapkitError(f"--min-agreement {self.min_agreement} is not a fraction; use a value in [0, 1], e.g. 0.99")
        if self.calibration is not None and not Path(self.calibration).is_dir():
            raise TrapkitError(f"calibration folder {self.calibration} does not exist; give a folder of photos")

    @property
    def kind(self) -> str:
        return self.quantize or self.precision


@dataclass(frozen=True)
class AgreementReport:
    """How a variant's top-1 class compares with the fp32 graph's on `images` inputs."""

    variant: str
    agreement: float
    images: int
    max_prob_diff: float

    def summary(self) -> str:
        return (f"{self.variant}: top-1 agreement with fp32 {self.agreement:.1%} on {self.images} calibration inputs, "
                f"max |probs diff| {self.max_prob_diff:.3f}")


def make_variant(fp32: bytes, spec: ModelSpec, settings: VariantSettings) -> tuple[bytes, AgreementReport | None]:
    """The serialized graph `settings` asks for, with its agreement report (None for fp32)."""
    if settings.kind == "fp32":
        return fp32, None
    from trapkit.export.calibration import calibration_images

    images = calibration_images(spec, settings.calibration)  # (N, S, S, 3) uint8
    data = to_fp16(fp32, spec) if settings.kind == "fp16" else to_int8(fp32, spec, images)
    report = top1_agreement(fp32, data, images, settings.kind)
    log.info("%s", report.summary())
    if settings.kind == "int8" and report.agreement < settings.min_agreement:
        raise TrapkitError(
            f"int8 graph agrees with fp32 on only {report.agreement:.1%} of {report.images} calibration inputs "
            f"(--min-agreement {settings.min_agreement:.1%}); nothing written. Use fp32, calibrate on more of "
            "your own photos with --calibration, or lower --min-agreement"
        )
    return data, report


def to_fp16(fp32: bytes, spec: ModelSpec) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from trapkit.export.onnx_export import check_model, quiet_third_party, set_metadata

    with quiet_third_party():
        proto = convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True)
    set_metadata(proto, spec, precision="fp16")
    check_model(proto)
    return proto.SerializeToString()


def to_int8(fp32: bytes, spec: ModelSpec, images: np.ndarray) -> bytes:
    """Static QDQ int8 calibrated (min/max) on `images` (N, S, S, 3) uint8."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from trapkit.export.onnx_export import check_model, quiet_third_party, set_metadata
    from trapkit.graph import INPUT_NAME

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: images[i:i + CALIBRATION_BATCH]}
                                 for i in range(0, len(images), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    proto = onnx.load_from_string(fp32)
    pixels = fold_normalisation_into_stem(proto, INPUT_NAME)  # None: graph of another shape, quantised as is
    overrides = {"TensorQuantOverrides": pixel_quant_override(pixels)} if pixels else {}
    with tempfile.TemporaryDirectory(prefix="trapkit-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        with quiet_third_party():
            quantize_static(
                str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS,
                reduce_range=True, extra_options=overrides,
            )
        proto = onnx.load(str(dst))
    if pixels:
        read_pixels_directly(proto, pixels)
    set_metadata(proto, spec, precision="int8")
    check_model(proto)
    return proto.SerializeToString()


def top1_agreement(reference: bytes, variant: bytes, images: np.ndarray, name: str) -> AgreementReport:
    from trapkit.export.onnx_export import ort_session, run_session

    ref_probs, _ = run_session(ort_session(reference), images)
    probs, _ = run_session(ort_session(variant), images)
    agreement = float(np.mean(ref_probs.argmax(axis=1) == probs.argmax(axis=1)))
    return AgreementReport(name, agreement, len(images), float(np.max(np.abs(ref_probs - probs))))
