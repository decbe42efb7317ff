"""Drive an AddaxAI model folder as AddaxAI's classification worker does (its image path), in a subprocess.

    python addaxai_worker.py MODEL_DIR MODEL_PATH INPUT_JSON OUTPUT_JSON

INPUT_JSON: {"items": [{"source": "image", "image_path": ..., "bbox": [x, y, w, h]}, ...],
             "batch_size": n (optional), "mode": "batch" | "per-crop" (optional; default: batch when the
             model has get_tensor and classify_batch)}
OUTPUT_JSON: {"class_names": {"1": name, ...}, "device": "GPU" | "CPU", "mode": ...,
              "results": [{"success": true, "classifications": [[name, conf], ...] (top 5, best first)}
                          or {"success": false, "error": ...}, one per item]}

Written for trapkit's tests from reading AddaxAI's `classification_worker.py` (the contract, not its code):
the model is imported from MODEL_DIR/inference.py by file location; the five required methods are checked;
`check_gpu` then `load_model`; each image is opened once, as `Image.open(path).convert("RGB")` with partial
decodes allowed and no EXIF transpose, and handed to `get_crop` for each of its boxes; in batch mode the
crops go through `get_tensor`, are stacked with NumPy and classified `batch_size` at a time (default 8 on a
GPU, else 1), otherwise `get_classification` takes one crop at a time. Nothing of trapkit is imported.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = True
REQUIRED = ("check_gpu", "load_model", "get_crop", "get_classification", "get_class_names")
KEPT = 5


def load_model_class(model_dir: Path, model_path: Path):
    module_spec = importlib.util.spec_from_file_location(f"addaxai_model_{model_dir.name}", model_dir / "inference.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    model = module.ModelInference(model_dir, model_path)
    missing = [m for m in REQUIRED if not callable(getattr(model, m, None))]
    if missing:
        raise SystemExit(f"ModelInference lacks {', '.join(missing)}")
    return model


def ranked(classifications) -> dict:
    if not classifications:
        return {"success": False, "error": "no classifications"}
    if any(not isinstance(c, (int, float)) or not math.isfinite(c) for _, c in classifications):
        return {"success": False, "error": "non-finite confidence"}
    best = sorted(classifications, key=lambda pair: pair[1], reverse=True)[:KEPT]
    return {"success": True, "classifications": [[str(name), float(conf)] for name, conf in best]}


def main(model_dir: str, model_path: str, input_json: str, output_json: str) -> None:
    model = load_model_class(Path(model_dir), Path(model_path))
    gpu = bool(model.check_gpu())
    model.load_model()
    request = json.loads(Path(input_json).read_text(encoding="utf-8"))
    items = request["items"]
    batched = callable(getattr(model, "get_tensor", None)) and callable(getattr(model, "classify_batch", None))
    mode = request.get("mode") or ("batch" if batched else "per-crop")
    batch_size = int(request.get("batch_size") or (8 if gpu else 1))
    class_names = model.get_class_names()
    results: list = [None] * len(items)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            answers = model.classify_batch(np.stack([tensor for _, tensor in pending]))
            for (index, _), answer in zip(pending, answers):
                results[index] = ranked(answer)
            pending.clear()

    by_image: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_image.setdefault(item["image_path"], []).append(index)
    for path, indices in by_image.items():
        try:
            image = Image.open(path).convert("RGB")
        except OSError as e:
            for index in indices:
                results[index] = {"success": False, "error": f"cannot open {path}: {e}"}
            continue
        for index in indices:
            crop = model.get_crop(image, tuple(items[index]["bbox"]))
            if crop is None:
                results[index] = {"success": False, "error": f"invalid crop for bbox {items[index]['bbox']}"}
            elif mode == "batch":
                pending.append((index, model.get_tensor(crop)))
                if len(pending) >= batch_size:
                    flush()
            else:
                results[index] = ranked(model.get_classification(crop))
    flush()
    Path(output_json).write_text(json.dumps({"class_names": class_names, "device": "GPU" if gpu else "CPU",
                                             "mode": mode, "results": results}), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__.split("\n\n")[1].strip())
    main(*sys.argv[1:])
