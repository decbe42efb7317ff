"""`trapkit export`: a trained run (or any saved model) to one ONNX graph, plus Triton and Hub copies.

Nothing heavy is imported here: torch, onnx and onnxruntime load inside the
adapter, so `trapkit --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

from trapkit.errors import TrapkitError
from trapkit.flags import given, only_with

# Kept in step with trapkit.export.triton.BACKENDS and pipeline.CHANGES_FILENAME (not imported: --help stays
# instant); a test compares them.
BACKENDS = ("onnxruntime", "python")
CHANGES_FILENAME = "CHANGES.md"


# Kept in step with trapkit.export.quantize (not imported: --help stays instant); a test compares them.
INT8_TARGETS = ("avx2", "vnni", "gpu")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_MIN_AGREEMENT, DEFAULT_CALIBRATION_METHOD = 0.99, "entropy"  # VariantSettings' defaults
ADDAXAI_REGIONS = ("global", "africa", "americas", "asia", "europe", "oceania")  # trapkit.export.addaxai.REGIONS


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "export",
        parents=[common],
        help="export a run or model to one parity-checked ONNX graph (Triton, Hub)",
        description="Write OUT/model.onnx: uint8 images (N, S, S, 3) in; probs (N, C) and embedding (N, D) out, "
        "normalisation inside, the model spec in its metadata. The graph is checked against PyTorch on real "
        "photos before it is written. SOURCE is a run folder, a model folder (spec.json + model.safetensors) "
        "or imagenet-lite0. With --addaxai DIR, also (or, without --out, only) an AddaxAI model folder.",
    )
    p.add_argument("source", metavar="SOURCE", help="run folder, model folder, or imagenet-lite0")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for model.onnx and export_report.json (needed unless --addaxai DIR is given)")
    p.add_argument("--taxonomy", type=Path, metavar="CSV",
                   help="label,taxonomy CSV: a SpeciesNet-style 'id;class;order;family;genus;species;common name' "
                   "per class, stored in the model (rollup, allow-lists, smoothing, common names)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |probs| difference from PyTorch accepted (default 1e-4)")
    v = p.add_argument_group("precision")
    v.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="float precision (default fp32)")
    v.add_argument("--quantize", choices=("int8",), default=None, help="int8 static quantisation (CPU serving)")
    v.add_argument("--calibration", type=Path, metavar="DIR",
                   help="with --quantize int8 or --precision fp16: photos (+ MegaDetector JSON) to calibrate int8; "
                   "30%% are held out to measure agreement with fp32 unless SOURCE is a run folder, whose "
                   "validation images measure it (default: a run's own images, else the bundled photos)")
    v.add_argument("--min-agreement", type=float, default=None,
                   help="with --quantize int8: refuse int8 below this top-1 agreement with fp32 on held-out "
                   f"images (default {DEFAULT_MIN_AGREEMENT:g})")
    v.add_argument("--int8-target", choices=INT8_TARGETS, default=None,
                   help="with --quantize int8: where the graph will run. vnni: CPUs with AVX-512 VNNI, AVX-VNNI "
                   "or AMX (8-bit weights); avx2: older x86 CPUs (7-bit weights, no overflow); gpu: int8 "
                   "symmetric for TensorRT (onnxruntime's CUDA provider runs it slower than fp32). Default: this "
                   "machine's CPU")
    v.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=None,
                   help="with --quantize int8: how activation ranges are set from the calibration images "
                   f"(default {DEFAULT_CALIBRATION_METHOD})")
    t = p.add_argument_group("Triton")
    t.add_argument("--triton", type=Path, metavar="REPO", help="also add the model to this Triton model repository")
    t.add_argument("--name", help="Triton model name (default: the run's folder name; an export that changes the "
                   "classes goes under NAME-2, NAME-3, ... so older versions keep theirs)")
    t.add_argument("--triton-backend", choices=BACKENDS, default=BACKENDS[0],
                   help="onnxruntime (NVIDIA's container) or python (onnxruntime inside Triton's Python backend); "
                   f"default {BACKENDS[0]}")
    t.add_argument("--triton-gpu", action="store_true", help="GPU instances (default: CPU)")
    t.add_argument("--tensorrt", action="store_true", help="TensorRT accelerator block (with --triton-gpu)")
    t.add_argument("--openvino", action="store_true", help="OpenVINO accelerator block (CPU instances)")
    t.add_argument("--max-batch-size", type=int, default=32, help="Triton max_batch_size (default 32)")
    p.add_argument("--hub-folder", type=Path, metavar="DIR", help="also write a Hugging Face Hub folder with a model card")
    p.add_argument("--license", default="other", help="license in the Hub model card (default: other)")
    add_addaxai_arguments(p)
    p.set_defaults(func=_run)


def add_addaxai_arguments(p) -> None:
    a = p.add_argument_group("AddaxAI (docs/addaxai.md)")
    a.add_argument("--addaxai", type=Path, metavar="DIR",
                   help="also write an AddaxAI model folder (manifest.json, inference.py, taxonomy.csv, weights) "
                   "that AddaxAI's pytorch environment runs as it ships; copy it to ~/AddaxAI/models/cls/ID/")
    a.add_argument("--developer", help="with --addaxai: who made the model, for AddaxAI's model list")
    a.add_argument("--description", help="with --addaxai: the model's description (default: made from the model "
                   "and its validation figures)")
    a.add_argument("--region", choices=ADDAXAI_REGIONS, help="with --addaxai: where the model is for (AddaxAI groups "
                   "its species models by region)")
    a.add_argument("--info-url", metavar="URL", help="with --addaxai: a page about the model (default: trapkit's)")
    a.add_argument("--addaxai-names", type=Path, metavar="CSV",
                   help="with --addaxai: a label,name CSV of the names AddaxAI shows, for classes whose names it "
                   "cannot take (a comma, non-ASCII letters)")


def _run(args) -> int:
    addaxai = _addaxai_settings(args)
    if args.out is None:
        only_with("--out DIR", False, _needs_out(args))
        if addaxai is None:
            raise TrapkitError("give --out DIR (the ONNX graph) or --addaxai DIR (an AddaxAI model folder), or both")
        return _run_addaxai(args, addaxai)
    code = _run_onnx(args)
    return _run_addaxai(args, addaxai) if addaxai else code


def _run_onnx(args) -> int:
    from trapkit.export.hub_folder import HubSettings
    from trapkit.export.pipeline import export_model
    from trapkit.export.quantize import VariantSettings
    from trapkit.export.triton import TritonSettings
    from trapkit.graph import ONNX_FILENAME

    only_with("--triton REPO", args.triton is not None, {
        "--name": args.name is not None, "--triton-gpu": args.triton_gpu, "--tensorrt": args.tensorrt,
        "--openvino": args.openvino, "--triton-backend": args.triton_backend != "onnxruntime"})
    only_with("--quantize int8", args.quantize is not None, {
        "--min-agreement": args.min_agreement is not None, "--int8-target": args.int8_target is not None,
        "--calibration-method": args.calibration_method is not None})
    only_with("--quantize int8 or --precision fp16", args.quantize is not None or args.precision != "fp32",
              {"--calibration": args.calibration is not None})
    variant = VariantSettings(precision=args.precision, quantize=args.quantize, calibration=args.calibration,
                              **given(min_agreement=args.min_agreement, int8_target=args.int8_target,
                                      calibration_method=args.calibration_method))
    triton = TritonSettings(repo=args.triton, name=args.name, backend=args.triton_backend, gpu=args.triton_gpu,
                            tensorrt=args.tensorrt, openvino=args.openvino,
                            max_batch_size=args.max_batch_size) if args.triton else None
    hub = HubSettings(folder=args.hub_folder, license=args.license) if args.hub_folder else None
    result = export_model(args.source, args.out, variant=variant, triton=triton, hub=hub,
                          tolerance=args.tolerance, taxonomy=args.taxonomy)
    fp32 = result.onnx_path.with_name(ONNX_FILENAME)
    print(f"wrote {fp32}" + (f" and {result.onnx_path}" if result.onnx_path != fp32 else ""))
    print(f"  parity with PyTorch: max |probs diff| {result.parity.max_prob_diff:.2e} "
          f"on {result.parity.parity_images} photos (tolerance {result.parity.tolerance:.0e})")
    if result.agreement:
        print(f"  {result.agreement.summary()}")
    if result.triton_version_dir:
        print(f"  Triton: {result.triton_version_dir}" + ("" if result.triton_new_version else
                                                          " (already served this graph: no new version)"))
    if result.hub_folder:
        print(f"  Hub folder: {result.hub_folder}")
    if result.changes:
        print(f"  {result.changes.title}: {result.onnx_path.with_name(CHANGES_FILENAME)}")
    return 0


def _needs_out(args) -> dict[str, bool]:
    return {"--triton": args.triton is not None, "--hub-folder": args.hub_folder is not None,
            "--precision fp16": args.precision != "fp32", "--quantize": args.quantize is not None}


def _addaxai_settings(args):
    only_with("--addaxai DIR", args.addaxai is not None, {
        "--developer": args.developer is not None, "--description": args.description is not None,
        "--region": args.region is not None, "--info-url": args.info_url is not None,
        "--addaxai-names": args.addaxai_names is not None})
    if args.addaxai is None:
        return None
    from trapkit.export.addaxai import AddaxaiSettings

    return AddaxaiSettings(args.addaxai, license=None if args.license == "other" else args.license,
                           **given(developer=args.developer, description=args.description, region=args.region,
                                   info_url=args.info_url, names=args.addaxai_names))


def _run_addaxai(args, settings) -> int:
    from trapkit.export.addaxai import export_addaxai
    from trapkit.export.pipeline import check_tolerance

    result = export_addaxai(args.source, settings, taxonomy=args.taxonomy, tolerance=check_tolerance(args.tolerance))
    print(f"wrote the AddaxAI model {result.model_id} to {result.folder}: copy it to ~/AddaxAI/models/cls/{result.model_id}/")
    print(f"  its inference.py against trapkit on {result.crops_checked} crops of the bundled photos: the same crops, "
          f"max |probs diff| {result.max_prob_diff:.2e}")
    print(f"  the models.json entry to propose to AddaxAI's zoo is in {result.folder / 'README.md'}")
    for note in result.notes:
        print(f"  {note}")
    return 0
