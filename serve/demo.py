"""The Gradio demo: upload camera-trap photos, see the top-k species.

Without detections each photo is classified whole, by the spec's resize
policy. With MegaDetector output (`--detections`, or a JSON uploaded on the
page) uploads are matched to its `images[].file` by file name, every animal
box above the threshold is cropped exactly as the batch classifier crops it
(the core's one preparation path, `trapkit.prepare`, with the model's own crop
policy unless settings say otherwise), and each crop's species is drawn on the photo.

Gradio groups concurrent requests (`batch=True`): `classify_requests` turns
a list of requests into one model batch and splits the answer back. A bad
upload (not an image, over the pixel limit, empty) is reported in that
request's status line and never fails the other requests of its batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from trapkit.detections import load_detections, qualifying
from trapkit.errors import TrapkitError
from trapkit.images import open_image
from trapkit.prepare import Preprocessing, crops_from_image
from trapkit.samples import SAMPLES_DIR
from trapkit.serve.settings import DemoSettings
from trapkit.web import BLOCKS_OPTIONS, launch

log = logging.getLogger(__name__)

EXAMPLE_PHOTOS = ("ocelot.jpg", "american_black_bear.jpg", "african_elephants.jpg", "domestic_cattle.jpg",
                  "domestic_dog.jpg", "blank.jpg")
TABLE_HEADERS = ["image", "region", "species", "confidence", "top-k"]
_BOX_COLOURS = {"animal": (255, 200, 0), "person": (80, 160, 255), "vehicle": (200, 80, 255)}
_LISTED_CLASSES = 20  # class names listed in the page header
_PREDICT_CHUNK = 32  # images per runtime.predict call: bounds memory on big uploads


class DetectionIndex:
    """MegaDetector detections by file name, to match uploads (which keep only their name)."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.categories = dict(doc["detection_categories"])
        self._by_name: dict[str, dict | None] = {}
        for im in doc["images"]:
            name = Path(im["file"].replace("\\", "/")).name
            # The same name in two folders cannot be told apart after upload: classify it whole.
            self._by_name[name] = None if name in self._by_name else im

    @classmethod
    def from_file(cls, path: str | Path) -> DetectionIndex:
        return cls(load_detections(path))

    def lookup(self, name: str) -> tuple[bool, list[dict]]:
        """(known, detections): known is False when the file is absent, ambiguous or failed in the JSON."""
        im = self._by_name.get(name)
        if im is None or im.get("detections") is None:
            return False, []
        return True, im["detections"]

    def items(self, detections: list[dict], prep: Preprocessing) -> list[int]:
        """Indices of `detections` that are items by the one rule of `trapkit.detections.qualifying`."""
        one = {"detection_categories": self.categories, "images": [{"file": "upload", "detections": detections}]}
        return qualifying(one, prep.threshold, prep.categories).get(0, [])


@dataclass
class Region:
    """One classified region of an upload: a detection box, or the whole photo (`bbox=None`)."""

    bbox: list[float] | None  # [x, y, w, h] normalised to the upright photo
    what: str  # "animal 0.94" or "whole image"
    probs: np.ndarray | None = None  # (C,) float32, filled after the model runs


@dataclass
class PhotoResult:
    name: str
    image: Image.Image  # shown copy, longest side <= display_size
    regions: list[Region]
    others: list[tuple[list[float], str]]  # boxes shown but not classified: (bbox, "person 0.91")
    note: str = ""  # e.g. "no animal detected above 0.1"


@dataclass
class RequestResult:
    """Everything one request shows: photos, per-item failures, one status line."""

    photos: list[PhotoResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    status: str = ""


def classify_requests(runtime, requests: list[tuple[list[str], DetectionIndex | None]],
                      settings: DemoSettings) -> list[RequestResult]:
    """Classify every photo of every request in one model batch. Bad files become `failures`."""
    prep = settings.preprocessing(runtime.spec)
    start = time.perf_counter()
    results: list[RequestResult] = []
    inputs: list[np.ndarray] = []  # (S, S, 3) uint8, one per region, in request/photo/region order
    regions: list[Region] = []
    for paths, index in requests:
        result = RequestResult()
        results.append(result)
        if not paths:
            result.status = "Upload one or more photos (JPEG, PNG, ...) or pick an example below."
            continue
        for path in paths:
            try:
                photo, crops = _prepare(Path(path), index, prep, settings)
            except TrapkitError as e:
                result.failures.append(str(e).replace(str(path), Path(path).name))
                continue
            result.photos.append(photo)
            inputs.extend(crops)  # (R, S, S, 3): one row per region
            regions.extend(photo.regions)
    if inputs:
        probs = _predict(runtime, np.stack(inputs))  # (R, C)
        for region, p in zip(regions, probs):
            region.probs = p
    took = time.perf_counter() - start
    for result in results:
        if not result.status:
            result.status = _status_line(result, len(requests), took)
    return results


def _prepare(path: Path, index: DetectionIndex | None, prep: Preprocessing, settings: DemoSettings):
    """(PhotoResult without probabilities, (R, S, S, 3) uint8 model inputs, one per region)."""
    img, _notes = open_image(path)
    shown = img.copy()
    shown.thumbnail((settings.display_size, settings.display_size), Image.BILINEAR)
    known, detections = index.lookup(path.name) if index is not None else (False, [])
    if not known:
        return PhotoResult(path.name, shown, [Region(None, "whole image")], []), crops_from_image(img, None, prep)
    items = set(index.items(detections, prep))
    regions, others = [], []
    for j in sorted(range(len(detections)), key=lambda j: -float(detections[j]["conf"])):
        det = detections[j]
        if float(det["conf"]) < prep.threshold:
            continue
        category = index.categories.get(str(det["category"]), str(det["category"]))
        what = f"{category} {float(det['conf']):.2f}"
        if j in items:
            regions.append(Region(list(det["bbox"]), what))
        else:
            others.append((list(det["bbox"]), what))
    crops = crops_from_image(img, [r.bbox for r in regions], prep)
    note = "" if regions else f"no {' or '.join(prep.categories)} detected above {prep.threshold:g}"
    return PhotoResult(path.name, shown, regions, others, note), crops


def _predict(runtime, batch: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, C) float32, in chunks."""
    return np.concatenate([np.asarray(runtime.predict(batch[i:i + _PREDICT_CHUNK]), dtype=np.float32)
                           for i in range(0, len(batch), _PREDICT_CHUNK)])


def top_k(probs: np.ndarray, labels, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i], float(probs[i])) for i in order]


def _status_line(result: RequestResult, batch_requests: int, took: float) -> str:
    n_regions = sum(len(p.regions) for p in result.photos)
    lines = []
    if result.photos:
        lines.append(f"Classified {n_regions} region(s) in {len(result.photos)} photo(s) "
                     f"({took * 1000:.0f} ms for a batch of {batch_requests} request(s)).")
    lines += [f"⚠️ {f}" for f in result.failures]
    if result.failures and not result.photos:
        lines.append("Upload camera-trap photos (JPEG, PNG, TIFF, ...).")
    return "\n\n".join(lines)


# -- drawing ---------------------------------------------------------------------------------

def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def annotate(photo: PhotoResult, labels) -> Image.Image:
    """The shown photo with every box and its label ("ocelot 0.93" for classified regions)."""
    img = photo.image.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    width = max(2, round(max(w, h) / 300))
    font = _font(max(12, round(max(w, h) / 45)))
    boxes = [(r.bbox, _region_caption(r, labels), _BOX_COLOURS["animal"]) for r in photo.regions if r.bbox]
    boxes += [(b, what, _BOX_COLOURS.get(what.split()[0], (255, 255, 255))) for b, what in photo.others]
    for bbox, text, colour in boxes:
        x, y, bw, bh = bbox
        x0, y0, x1, y1 = x * w, y * h, (x + bw) * w, (y + bh) * h
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y0 - (bottom - top) - 2 * width if y0 > (bottom - top) + 2 * width else y1
        draw.rectangle((x0, ty, x0 + (right - left) + 2 * width, ty + (bottom - top) + 2 * width), fill=colour)
        draw.text((x0 + width - left, ty + width - top), text, fill=(0, 0, 0), font=font)
    return img


def _region_caption(region: Region, labels) -> str:
    species, conf = top_k(region.probs, labels, 1)[0]
    return f"{species} {conf:.2f}"


def photo_caption(photo: PhotoResult, labels) -> str:
    if not photo.regions:
        return f"{photo.name}: {photo.note}"
    return f"{photo.name}: " + ", ".join(_region_caption(r, labels) for r in photo.regions)


def photo_label(photo: PhotoResult, labels, k: int) -> dict[str, float] | None:
    """The top-k of the photo's first region (the most confident detection), for gr.Label."""
    return dict(top_k(photo.regions[0].probs, labels, k)) if photo.regions else None


def table_rows(result: RequestResult, labels, k: int) -> list[list]:
    rows = []
    for photo in result.photos:
        for r in photo.regions:
            ranked = top_k(r.probs, labels, k)
            rows.append([photo.name, r.what, ranked[0][0], round(ranked[0][1], 4),
                         ", ".join(f"{s} {p:.2f}" for s, p in ranked)])
        if not photo.regions:
            rows.append([photo.name, photo.note, "", None, ""])
    return rows


# -- the page --------------------------------------------------------------------------------

def example_photos() -> list[Path]:
    return [SAMPLES_DIR / name for name in EXAMPLE_PHOTOS if (SAMPLES_DIR / name).is_file()]


def build_demo(runtime, detections: DetectionIndex | str | Path | None = None, top_k: int = 5,
               settings: DemoSettings | None = None):
    """The demo as a gr.Blocks (not launched). `detections`: MegaDetector JSON used when none is uploaded."""
    settings = settings or DemoSettings(top_k=top_k)
    if detections is not None and not isinstance(detections, DetectionIndex):
        detections = DetectionIndex.from_file(detections)
    spec = runtime.spec
    labels = list(spec.labels)

    def classify(files_batch, detections_batch):
        # Lists, one entry per request Gradio grouped into this call.
        requests, early = [], {}
        for i, (files, det_file) in enumerate(zip(files_batch, detections_batch)):
            index = detections
            if det_file:
                try:
                    index = DetectionIndex.from_file(det_file)
                except TrapkitError as e:
                    early[i] = RequestResult(status=f"⚠️ {str(e).replace(str(det_file), Path(det_file).name)}")
            requests.append(([] if i in early else list(files or []), index))
        results = classify_requests(runtime, requests, settings)
        results = [early.get(i, r) for i, r in enumerate(results)]
        galleries, best, tables, statuses, states = [], [], [], [], []
        for r in results:
            galleries.append([(annotate(p, labels), photo_caption(p, labels)) for p in r.photos])
            per_photo = [photo_label(p, labels, settings.top_k) for p in r.photos]
            best.append(next((lab for lab in per_photo if lab), None))
            tables.append(table_rows(r, labels, settings.top_k))
            statuses.append(r.status)
            states.append(per_photo)
        return galleries, best, tables, statuses, states

    def show_selected(per_photo, evt: gr.SelectData):
        if not per_photo or evt.index is None or evt.index >= len(per_photo):
            return gr.skip()
        return per_photo[evt.index]

    source = "each detected animal" if detections is not None else "each photo"
    shown_labels = ", ".join(labels[:_LISTED_CLASSES]) + (
        f" and {len(labels) - _LISTED_CLASSES} more" if len(labels) > _LISTED_CLASSES else "")
    with gr.Blocks(title=f"trapkit demo: {spec.name}", **BLOCKS_OPTIONS) as demo:
        # Only trapkit's own words go through Markdown; the model's name and labels are shown as plain text.
        gr.Markdown(f"## trapkit demo\nUpload camera-trap photos to see the top {settings.top_k} species for "
                    f"{source}.")
        gr.Textbox(f"{spec.name}: {len(labels)} classes: {shown_labels}", label="Model", interactive=False,
                   max_lines=4, elem_id="model")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Photos", file_count="multiple", elem_id="photos")
                det_file = gr.File(label="MegaDetector JSON (optional, matched by file name)",
                                   elem_id="detections")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
                status = gr.Markdown(elem_id="status")
                gr.Examples([[[str(p)]] for p in example_photos()], inputs=[files],
                            example_labels=[p.stem.replace("_", " ") for p in example_photos()],
                            label="Bundled camera-trap photos")
            with gr.Column(scale=2):
                best = gr.Label(num_top_classes=settings.top_k, label="Top species (selected photo)",
                                elem_id="top-species")
                # JPEG: Gradio's default WebP costs ~130 ms per 1024 px photo, JPEG ~5 ms.
                gallery = gr.Gallery(label="Labelled photos", columns=2, height="auto", object_fit="contain",
                                     format="jpeg", elem_id="gallery")
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["str", "str", "str", "number", "str"],
                                     label="Every region", interactive=False, elem_id="table")
        per_photo = gr.State([])
        # `change` also fires when an example fills `files`, so examples classify on click.
        gr.on([button.click, files.change, det_file.change], classify,
              inputs=[files, det_file], outputs=[gallery, best, table, status, per_photo],
              batch=True, max_batch_size=settings.max_batch_size, concurrency_limit=1, api_name="classify")
        gallery.select(show_selected, inputs=[per_photo], outputs=[best], queue=False)
    demo.queue(max_size=64, default_concurrency_limit=1)
    return demo


def serve_demo(model: str, detections: str | Path | None = None, settings: DemoSettings | None = None,
               host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Open `model`, build the demo and serve it until interrupted (or return (app, url) when `block=False`)."""
    from trapkit.serve.runtime import open_runtime

    settings = settings or DemoSettings()
    index = DetectionIndex.from_file(detections) if detections else None
    runtime = open_runtime(model)
    app = build_demo(runtime, index, settings=settings)
    log.info("demo of %s (%d classes)", runtime.spec.name, runtime.spec.num_classes)
    url = launch(app, host, port, block=block, allowed_paths=[SAMPLES_DIR])
    return app, url
