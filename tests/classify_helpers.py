"""Helpers for the classify tests: MegaDetector's own validator, small detection files, model variants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def megadetector_validate(path: Path, images_dir: Path | None = None) -> dict:
    """Run the `megadetector` package's `validate_batch_results`; raises on the first error it finds."""
    from PIL import ImageFile

    # megadetector switches Pillow's partial decoding on for the whole process at
    # import; keep it off so later tests still see truncated files as truncated.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    from megadetector.postprocessing.validate_batch_results import ValidateBatchResultsOptions, validate_batch_results

    ImageFile.LOAD_TRUNCATED_IMAGES = previous

    options = ValidateBatchResultsOptions()
    options.raise_errors = True
    if images_dir is not None:
        options.check_image_existence = True
        options.relative_path_base = str(images_dir)
    results = validate_batch_results(str(path), options)["validation_results"]
    assert not results["errors"], results["errors"]
    return results


def write_detections(path: Path, entries: list[dict]) -> Path:
    """A minimal MegaDetector 1.6 file with `entries` as its images."""
    doc = {"info": {"format_version": "1.6", "detector": "md_v5a.0.0.pt"},
           "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": entries}
    path.write_text(json.dumps(doc))
    return path


def animal(bbox=(0.2, 0.2, 0.4, 0.4), conf=0.9) -> dict:
    return {"category": "1", "conf": conf, "bbox": list(bbox)}


def onnx_with_spec(src: Path, dst: Path, **changes) -> Path:
    """A copy of a trapkit model.onnx whose spec metadata has `changes` (taxonomy, labels, name, ...), its graph
    untouched."""
    import onnx

    from trapkit.spec import ModelSpec

    shutil.copy(src, dst)
    proto = onnx.load(str(dst))
    for prop in proto.metadata_props:
        if prop.key == "trapkit.spec":
            prop.value = ModelSpec.from_json(prop.value).replace(**changes).to_json()
    onnx.save(proto, str(dst))
    return dst


def megadetector_module(name: str):
    """Import `megadetector.<name>` without leaving Pillow's partial decoding switched on (see above)."""
    import importlib

    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    module = importlib.import_module(f"megadetector.{name}")
    ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return module


def megadetector_smoothing_options(options):
    """MegaDetector's ClassificationSmoothingOptions with the fields of trapkit's `SmoothingOptions`."""
    import dataclasses

    md = megadetector_module("postprocessing.classification_postprocessing")
    theirs = md.ClassificationSmoothingOptions()
    for key, value in dataclasses.asdict(options).items():
        assert hasattr(theirs, key), key  # same names
        setattr(theirs, key, list(value) if isinstance(value, tuple) else value)
    return theirs


def top1(doc: dict) -> list:
    """Top-1 class id of every detection, None where unclassified, in file order."""
    return [[(d.get("classifications") or [[None]])[0][0] for d in im.get("detections") or ()] for im in doc["images"]]


# The bundled photos' crops (detections of `animal` at >= 0.1, in file and detection order) and the
# class a fitted model should call each: the elephants photo holds one "cattle" among its elephants,
# the cattle photo one "ocelot", so smoothing has something to do.
FITTED_CLASSES = {"african_elephants.jpg": [3, 3, 3, 3, 1, 3, 3], "american_black_bear.jpg": [0],
                  "domestic_cattle.jpg": [1, 1, 4], "domestic_dog.jpg": [2], "ocelot.jpg": [4]}


def fitted_model(model_dir: Path, dst: Path, samples_dir: Path) -> Path:
    """A copy of the tiny model whose head is fitted (label smoothing 0.4: confidences ~0.5-0.8) to call the
    bundled crops as FITTED_CLASSES says, exported to `dst` (model.onnx). Real crops, real training."""
    import numpy as np
    import torch

    from trapkit import detections as md
    from trapkit.export.onnx_export import export_onnx
    from trapkit.prepare import Preprocessing, prepare_image
    from trapkit.train.model import load_model

    torch.manual_seed(0)
    model = load_model(model_dir).eval()
    doc = md.load_detections(samples_dir / "md_v5a_detections.json")
    prep = Preprocessing.from_spec(model.spec)
    crops, classes = [], []
    for i, dets in sorted(md.qualifying(doc, prep.threshold, prep.categories).items()):
        im = doc["images"][i]
        crops.append(prepare_image(samples_dir / im["file"], [im["detections"][j]["bbox"] for j in dets], prep).crops)
        classes += FITTED_CLASSES[im["file"]]
    with torch.no_grad():
        _, embedding = model(torch.from_numpy(np.concatenate(crops)))
    target = torch.tensor(classes)
    optimiser = torch.optim.Adam(model.head.parameters(), lr=0.05)
    for _ in range(2000):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model.head(embedding), target, label_smoothing=0.4).backward()
        optimiser.step()
    return export_onnx(model.eval(), dst).path


def burst_of_copies(samples_dir: Path, root: Path, n: int = 14) -> tuple[Path, Path]:
    """(images, detections): n copies of the bundled photos in two folders, 1-3 detections each (a made-up box
    on blanks), for runs long enough to be interrupted."""
    images = root / "images"
    entries = []
    source = json.loads((samples_dir / "md_v5a_detections.json").read_text())["images"]
    for folder in ("a", "b"):
        (images / folder).mkdir(parents=True)
        for im in source:
            shutil.copy(samples_dir / im["file"], images / folder / im["file"])
            dets = [d for d in im["detections"] if d["conf"] >= 0.5][:3] or [animal(conf=0.8)]
            entries.append({"file": f"{folder}/{im['file']}", "detections": dets})
    return images, write_detections(root / "md.json", entries[:n])
