"""`trapkit export`: a trained run (or any saved model) to one ONNX graph, plus Triton and Hub copies.

Nothing heavy is imported here: torch, onnx and onnxruntime load inside the
adapter, so `trapkit --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

from trapkit.flags import only_with


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "export",
        parents=[common],
        help="export a run or model to one parity-checked ONNX graph (Triton, Hub)",
        description="Write OUT/model.onnx: uint8 images (N, S, S, 3) in; probs (N, C) and embedding (N, D) out, "
        "normalisation inside, the model spec in its metadata. The graph is checked against PyTorch on real "
        "photos before it is written. SOURCE is a run folder, a model folder (spec.json + model.safetensors) "
        "or imagenet-lite0.",
    )
    p.add_argument("source", metavar="SOURCE", help="run folder, model folder, or imagenet-lite0")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for model.onnx and export_report.json")
    p.add_argument("--taxonomy", type=Path, metavar="CSV",
                   help="label,taxonomy CSV: a SpeciesNet-style 'id;class;order;family;genus;species;common name' "
                   "per class, stored in the model (rollup, allow-lists, smoothing, common names)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |probs| difference from PyTorch accepted (default 1e-4)")
    v = p.add_argument_group("precision")
    v.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="float precision (default fp32)")
    v.add_argument("--quantize", choices=("int8",), default=None, help="int8 static quantisation (CPU serving)")
    v.add_argument("--calibration", type=Path, metavar="DIR",
                   help="with --quantize int8 or --precision fp16: photos (+ MegaDetector JSON) to calibrate int8 "
                   "and measure agreement with fp32 (default: bundled photos)")
    v.add_argument("--min-agreement", type=float, default=None,
                   help="with --quantize int8: refuse int8 below this top-1 agreement with fp32 (default 0.99)")
    t = p.add_argument_group("Triton")
    t.add_argument("--triton", type=Path, metavar="REPO", help="also add the model to this Triton model repository")
    t.add_argument("--name", help="Triton model name (default: the model spec's name)")
    t.add_argument("--triton-backend", choices=("onnxruntime", "python"), default="onnxruntime",
                   help="onnxruntime (NVIDIA's container) or python (onnxruntime inside Triton's Python backend)")
    t.add_argument("--triton-gpu", action="store_true", help="GPU instances (default: CPU)")
    t.add_argument("--tensorrt", action="store_true", help="TensorRT accelerator block (with --triton-gpu)")
    t.add_argument("--openvino", action="store_true", help="OpenVINO accelerator block (CPU instances)")
    t.add_argument("--max-batch-size", type=int, default=32, help="Triton max_batch_size (default 32)")
    p.add_argument("--hub-folder", type=Path, metavar="DIR", help="also write a Hugging Face Hub folder with a model card")
    p.add_argument("--license", default="other", help="license in the Hub model card (default: other)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from trapkit.export.hub_folder import HubSettings
    from trapkit.export.pipeline import export_model
    from trapkit.export.quantize import VariantSettings
    from trapkit.export.triton import TritonSettings

    only_with("--triton REPO", args.triton is not None, {
        "--name": args.name is not None, "--triton-gpu": args.triton_gpu, "--tensorrt": args.tensorrt,
        "--openvino": args.openvino, "--triton-backend": args.triton_backend != "onnxruntime"})
    only_with("--quantize int8", args.quantize is not None, {"--min-agreement": args.min_agreement is not None})
    only_with("--quantize int8 or --precision fp16", args.quantize is not None or args.precision != "fp32",
              {"--calibration": args.calibration is not None})
    min_agreement = VariantSettings.min_agreement if args.min_agreement is None else args.min_agreement
    variant = VariantSettings(precision=args.precision, quantize=args.quantize, calibration=args.calibration,
                              min_agreement=min_agreement)
    triton = TritonSettings(repo=args.triton, name=args.name, backend=args.triton_backend, gpu=args.triton_gpu,
                            tensorrt=args.tensorrt, openvino=args.openvino,
                            max_batch_size=args.max_batch_size) if args.triton else None
    hub = HubSettings(folder=args.hub_folder, license=args.license) if args.hub_folder else None
    result = export_model(args.source, args.out, variant=variant, triton=triton, hub=hub,
                          tolerance=args.tolerance, taxonomy=args.taxonomy)
    print(f"wrote {result.onnx_path}")
    print(f"  parity with PyTorch: max |probs diff| {result.parity.max_prob_diff:.2e} "
          f"on {result.parity.parity_images} photos (tolerance {result.parity.tolerance:.0e})")
    if result.agreement:
        print(f"  {result.agreement.summary()}")
    if result.triton_version_dir:
        print(f"  Triton: {result.triton_version_dir}")
    if result.hub_folder:
        print(f"  Hub folder: {result.hub_folder}")
    return 0
