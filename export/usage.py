"""How to use an exported model outside trapkit, as it was trained: the examples of the Hub card and the
Triton README.

A model trained on MegaDetector detections must be fed the crops it learned from: the square crop of the
model's crop policy (`ModelSpec.crop_policy`: margin, interpolation, input size; padding past the frame),
cut from the upright photo, for each detection at or above the model's threshold in its categories.
Resizing a whole photo misuses such a model. The examples below carry that policy as plain numbers and a
dozen lines of Pillow (the same arithmetic as `trapkit.crops`, on a full decode), so they run with
onnxruntime or tritonclient alone; `tests/test_export_usage.py` runs them and compares with `trapkit classify`.
"""

from __future__ import annotations

from trapkit.spec import ModelSpec

# The crop arithmetic of trapkit.crops, spelled out for a reader with Pillow alone.
CROP_FUNCTION = '''\
def crop(img, bbox):
    """The model's input for one MegaDetector box [x, y, w, h] (fractions of the upright photo)."""
    W, H = img.size
    x, y, w, h = bbox
    x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    w, h = max(min(max(x + w, 0.0), 1.0) - x0, 0.0), max(min(max(y + h, 0.0), 1.0) - y0, 0.0)
    side = max(w * W, h * H, 1.0) * (1 + 2 * MARGIN)  # a square: the longer side plus MARGIN on each side

    def clamp(start, extent):  # inside the photo where it fits; centred as near the box as it can be where not
        lo, hi = sorted((0.0, extent - side))
        return min(max(start, lo), hi)

    left, top = clamp((x0 + w / 2) * W - side / 2, W), clamp((y0 + h / 2) * H - side / 2, H)
    if left >= 0 and top >= 0 and left + side <= W + 1e-6 and top + side <= H + 1e-6:
        box = (left, top, min(left + side, W), min(top + side, H))
        return img.resize((SIZE, SIZE), RESAMPLE, box=box, reducing_gap=3.0)
    l, t, s = round(left), round(top), max(1, round(side))  # larger than the photo: pad with black
    canvas = Image.new("RGB", (s, s), (0, 0, 0))
    inside = (max(l, 0), max(t, 0), min(l + s, W), min(t + s, H))
    canvas.paste(img.crop(inside), (inside[0] - l, inside[1] - t))
    return canvas.resize((SIZE, SIZE), RESAMPLE, reducing_gap=3.0)
'''

WHOLE_FUNCTION = '''\
def whole(img):
    """The model's input for a whole photo (a model trained on whole images, no detector)."""
    return {resize}
'''


def constants(spec: ModelSpec) -> str:
    p = spec.crop_policy
    return "\n".join([
        f"SIZE, MARGIN, RESAMPLE = {spec.input_size}, {p.margin!r}, Image.{p.interpolation.upper()}  # the crop policy",
        f"THRESHOLD, CATEGORIES = {p.threshold!r}, {sorted(c.lower() for c in p.categories)!r}  # detections classified",
    ])


def _whole(spec: ModelSpec) -> str:
    s, resample = spec.input_size, "RESAMPLE"
    resize = (f"ImageOps.fit(img, ({s}, {s}), {resample})" if spec.resize_mode == "center_crop"
              else f"img.resize(({s}, {s}), {resample})")
    return WHOLE_FUNCTION.format(resize=resize)


_READ = '''\
doc = json.load(open(DETECTIONS))
names = {{k: v.lower() for k, v in doc["detection_categories"].items()}}
for entry in doc["images"]:
    chosen = [(j, d["bbox"]) for j, d in enumerate(entry.get("detections") or ())
              if names.get(d["category"]) in CATEGORIES and d["conf"] >= THRESHOLD]
    if not chosen:
        continue
    img = ImageOps.exif_transpose(Image.open(os.path.join(IMAGES, entry["file"]))).convert("RGB")
    batch = np.stack([np.asarray(crop(img, box), dtype=np.uint8) for _, box in chosen])  # (k, {s}, {s}, 3) uint8
'''


def _detections_script(spec: ModelSpec, runtime: str, setup: list[str], infer: list[str]) -> str:
    """MegaDetector's output for a folder in, each detection's top species printed: `runtime` imported, `setup`
    lines after the constants, `infer` lines turning `batch` into `probs` inside the loop."""
    return "\n".join([
        "import json, os",
        f"import numpy as np, {runtime}",
        "from PIL import Image, ImageOps",
        "",
        'IMAGES, DETECTIONS = "photos", "md.json"  # your photos, and MegaDetector\'s output for them',
        constants(spec),
        *setup,
        "",
        "",
        CROP_FUNCTION,
        "",
        _READ.format(s=spec.input_size).rstrip(),
        *(f"    {line}" for line in infer),
        "    for (j, _), p in zip(chosen, probs):  # j: the detection's index in MegaDetector's list",
        '        print(entry["file"], j, labels[int(p.argmax())], round(float(p.max()), 4))',
    ]) + "\n"


def onnxruntime_example(spec: ModelSpec) -> str:
    """The detections script with onnxruntime alone."""
    return _detections_script(spec, "onnxruntime as ort", [
        'session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
        'labels = json.load(open("config.json"))["label_names"]',
    ], ['probs, embedding = session.run(["probs", "embedding"], {"images": batch})'])


def triton_example(spec: ModelSpec, model_name: str, url: str = "localhost:8000") -> str:
    """The detections script against a Triton server (tritonclient[http])."""
    return _detections_script(spec, "tritonclient.http as httpclient", [
        f'client = httpclient.InferenceServerClient("{url}")',
        f'MODEL = "{model_name}"',
        "labels = json.loads(client.get_model_config(MODEL)['parameters']['trapkit.spec']['string_value'])['labels']",
    ], ['images = httpclient.InferInput("images", list(batch.shape), "UINT8")',
        "images.set_data_from_numpy(batch)",
        'probs = client.infer(MODEL, [images], outputs=[httpclient.InferRequestedOutput("probs")]).as_numpy("probs")'])


def whole_image_example(spec: ModelSpec) -> str:
    """For a model trained on whole images (plankton, fish photos): one photo in, its class out."""
    return "\n".join([
        "import json",
        "import numpy as np, onnxruntime as ort",
        "from PIL import Image, ImageOps",
        "",
        constants(spec).splitlines()[0],
        'session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
        'labels = json.load(open("config.json"))["label_names"]',
        "",
        "",
        _whole(spec),
        "",
        'img = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")',
        "batch = np.asarray(whole(img), dtype=np.uint8)[None]  # (1, S, S, 3) uint8, NHWC",
        'probs, embedding = session.run(["probs", "embedding"], {"images": batch})',
        "print(labels[int(probs[0].argmax())], float(probs[0].max()))",
    ]) + "\n"


def usage_sections(spec: ModelSpec, model_name: str, on_detections: bool) -> str:
    """The Markdown of 'use it' sections for a model card or a Triton README."""
    s = spec.input_size
    if not on_detections:
        return f"""## Use with onnxruntime alone

This model was trained on whole images ({spec.resize_mode}, {s} x {s}):

```python
{whole_image_example(spec)}```
"""
    p = spec.crop_policy
    return f"""## Use with trapkit

```bash
pip install "trapkit[serve]"
trapkit classify photos/ --model model.onnx --detections md.json --out md_species.json
# or straight from the Hub: --model hf://OWNER/{model_name}
```

## Use with onnxruntime alone

The model was trained on MegaDetector detections in {', '.join(p.categories)} at or above {p.threshold:g},
each cut as a square crop of the box's longer side plus {p.margin:g} of it on each side (padded with black
past the frame), resized to {s} x {s} ({p.interpolation}). Feed it the same crops, never the whole photo:

```python
{onnxruntime_example(spec)}```

## Use with Triton Inference Server

```bash
docker run --rm -p8000:8000 -v $PWD/model_repository:/models \\
  nvcr.io/nvidia/tritonserver:24.08-py3 tritonserver --model-repository=/models
trapkit classify photos/ --triton-url localhost:8000 --triton-model {model_name} --detections md.json --out md_species.json
```

or, with tritonclient alone (the same crops):

```python
{triton_example(spec, model_name)}```
"""


def triton_readme(spec: ModelSpec, name: str, on_detections: bool) -> str:
    """README.md of a Triton model folder: what it is, how to call it with the crops it was trained on."""
    return f"""# {name}

A {spec.num_classes}-class trapkit model: input `images` uint8 (N, {spec.input_size}, {spec.input_size}, 3);
outputs `probs` (N, {spec.num_classes}) and `embedding` (N, D); classes in `labels.txt`. Every version in this
folder is served (ask for one by its number to roll back; without a number Triton answers with the newest);
they share this class list and input preparation. What each version changed: `CHANGES.md`.

{usage_sections(spec, name, on_detections)}"""
