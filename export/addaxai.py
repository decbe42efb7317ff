"""An AddaxAI model folder: a trapkit model that AddaxAI's own classification worker loads and runs as it is.

    DIR/manifest.json     the catalog entry AddaxAI validates against its `ModelManifest` (ASCII JSON: AddaxAI
                          opens it with the platform's default encoding)
    DIR/inference.py      `ModelInference` (export/templates/addaxai_inference.py.tmpl): rebuilds the network with
                          timm or torchvision and cuts crops by the model's own crop policy; runs in AddaxAI's
                          `pytorch` environment, which has no onnxruntime and no trapkit
    DIR/model.safetensors the weights; its metadata holds the model spec and the class names AddaxAI shows
    DIR/taxonomy.csv      model_class,class,order,family,genus,species (lowercase; species is the epithet)
    DIR/README.md         how to install it, the models.json entry for AddaxAI's zoo, the validation figures

Nothing lands in DIR until the folder's own `inference.py`, loaded here, gives the crops and probabilities of
trapkit's model on the bundled photos (docs/addaxai.md has the measured figures and the reasons).
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import io
import json
import logging
import re
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trapkit.atomic import atomic_write_bytes, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.export.changes import cell as _cell
from trapkit.spec import ModelSpec
from trapkit.taxonomy import RANKS, csv_rows, few, parse_taxon, read_taxonomy_csv

log = logging.getLogger(__name__)

# AddaxAI's `ModelRegion`: how its species-model menu groups classifiers.
REGIONS = ("global", "africa", "americas", "asia", "europe", "oceania")
REGION_EMOJI = {"global": "\U0001F30D", "africa": "\U0001F30D", "europe": "\U0001F30D",
                "americas": "\U0001F30E", "asia": "\U0001F30F", "oceania": "\U0001F30F"}
ENV = "pytorch"
# The first AddaxAI release whose `pytorch` environment was read to have what inference.py imports (torch 2.8,
# torchvision, timm with safetensors) and whose worker has the batch interface: v7.0.2.
MIN_APP_VERSION = "7.0.2"
INFO_URL = "https://github.com/trapkit/trapkit"
DEVELOPER = "Unknown (trained with trapkit)"
TEMPLATE = Path(__file__).resolve().parent / "templates" / "addaxai_inference.py.tmpl"
WEIGHTS, INFERENCE, MANIFEST, TAXONOMY, README = (
    "model.safetensors", "inference.py", "manifest.json", "taxonomy.csv", "README.md")
TAXONOMY_COLUMNS = ("model_class", *RANKS)
SPEC_KEY, NAMES_KEY = "trapkit.spec", "addaxai.class_names"  # the weights' metadata, as inference.py reads it
NAMES_COLUMNS = ("label", "name")


@dataclass(frozen=True)
class AddaxaiSettings:
    """`trapkit export --addaxai DIR`: where the folder goes and what its catalog entry says."""

    folder: Path
    developer: str = DEVELOPER
    description: str | None = None  # None: made from the model and its validation figures
    region: str | None = None  # None: left out (AddaxAI then groups the model with no region)
    info_url: str = INFO_URL
    license: str | None = None
    names: Path | None = None  # a label,name CSV: the names AddaxAI shows for some or all classes

    def __post_init__(self):
        if self.region is not None and self.region not in REGIONS:
            raise TrapkitError(f"unknown region {self.region!r}; use one of {', '.join(REGIONS)}")
        for flag, value in (("--developer", self.developer), ("--info-url", self.info_url)):
            if not value.strip():
                raise TrapkitError(f"{flag} is empty; give a name or address, or leave the flag out")


@dataclass(frozen=True)
class AddaxaiResult:
    folder: Path
    model_id: str
    names: tuple[str, ...]
    max_prob_diff: float
    crops_checked: int
    notes: tuple[str, ...]  # one line each: what the folder could not say (taxonomy gaps)


def export_addaxai(source: str | Path, settings: AddaxaiSettings, *, taxonomy: str | Path | None = None,
                   tolerance: float = 1e-4) -> AddaxaiResult:
    """Write the AddaxAI folder for `source` (a run folder, a model folder or `imagenet-lite0`)."""
    from trapkit.export.onnx_export import ensure_writable_dir, resolve_source_dir
    from trapkit.export.pipeline import removed_if_failed

    model_dir = resolve_source_dir(source)
    folder = Path(settings.folder)
    with removed_if_failed([folder]):
        ensure_writable_dir(folder)
        return _export(source, model_dir, folder, settings, taxonomy, tolerance)


def _export(source, model_dir: Path | None, folder: Path, settings: AddaxaiSettings, taxonomy, tolerance: float):
    from trapkit.export.hub_folder import read_metrics
    from trapkit.export.onnx_export import load_source

    if model_dir is not None:  # bad names and rows fail before the slow load
        spec = ModelSpec.load(model_dir)
        _checked_names(spec, settings.names, imagenet=False)
        if taxonomy is not None:
            read_taxonomy_csv(taxonomy, spec.labels)
    model = load_source(source)
    if taxonomy is not None:
        model.spec = model.spec.replace(taxonomy=read_taxonomy_csv(taxonomy, model.spec.labels))
    spec = model.spec
    names = _checked_names(spec, settings.names, imagenet=model_dir is None)
    name = _run_name(model_dir, spec)
    model_id = model_id_for(name, spec)
    metrics = read_metrics(model_dir)
    weights = _weights(model, names)
    inference = inference_source()
    rows, notes = taxonomy_rows(spec, names)
    manifest = manifest_entry(spec, names, settings, model_id, name, metrics)
    with tempfile.TemporaryDirectory(prefix=".trapkit-addaxai-", dir=folder) as tmp:
        (Path(tmp) / INFERENCE).write_text(inference, encoding="utf-8")
        (Path(tmp) / WEIGHTS).write_bytes(weights)
        prob_diff, crops = check_against_trapkit(model, Path(tmp), tolerance)
    atomic_write_bytes(folder / WEIGHTS, weights)
    atomic_write_text(folder / INFERENCE, inference)
    atomic_write_text(folder / TAXONOMY, taxonomy_csv(rows))
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=True) + "\n")
    atomic_write_text(folder / README, readme(spec, names, manifest, rows, metrics, folder.resolve().name))
    for note in notes:
        log.debug("%s", note)
    return AddaxaiResult(folder, model_id, names, prob_diff, crops, notes)


# -- names ---------------------------------------------------------------------------------------

def _checked_names(spec: ModelSpec, names_csv: Path | None, imagenet: bool) -> tuple[str, ...]:
    """The name AddaxAI shows for each class (spec order): the label, an ImageNet class's first synonym, or
    the name a `label,name` CSV gives; a one-line error for names AddaxAI would mishandle."""
    names = list(imagenet_names(spec.labels) if imagenet else spec.labels)
    given = _read_names(names_csv, spec.labels) if names_csv is not None else {}
    names = [given.get(label, name) for label, name in zip(spec.labels, names)]
    fix = (f"give AddaxAI names in {names_csv}" if names_csv else
           "give AddaxAI names for them with --addaxai-names CSV (columns label,name)")
    # AddaxAI compares names lowercased by SQLite (which folds ASCII letters only), splits its label filters on
    # commas and strips the names it reads from taxonomy.csv.
    non_ascii = [n for n in names if not n.isascii()]
    if non_ascii:
        raise TrapkitError(
            f"class names {few([repr(n) for n in non_ascii])} are not ASCII: AddaxAI lowercases names in SQLite, "
            f"which folds ASCII letters only, so their taxonomy and filters would not match; {fix}")
    comma = [n for n in names if "," in n]
    if comma:
        raise TrapkitError(f"class names {few([repr(n) for n in comma])} hold a comma, on which AddaxAI splits "
                           f"its label filters; {fix}")
    odd = [n for n in names if not n.isprintable() or not n.strip() or n != n.strip()]
    if odd:
        raise TrapkitError(f"class names {few([repr(n) for n in odd])} are empty, hold control characters or "
                           f"start or end with a space, which AddaxAI strips; {fix}")
    lowered = [n.lower() for n in names]
    twins = sorted({n for n in names if lowered.count(n.lower()) > 1})
    if twins:
        raise TrapkitError(f"class names {few([repr(n) for n in twins])} differ only in case, and AddaxAI "
                           f"compares names lowercased; {fix}")
    return tuple(names)


def _read_names(path: Path, labels) -> dict[str, str]:
    known, names, problems = set(labels), {}, []
    for n, row in csv_rows(Path(path), "AddaxAI names", NAMES_COLUMNS):
        label, name = row.get("label") or "", row.get("name") or ""
        if not label.strip() and not name.strip():
            continue
        label = label if label in known else label.strip()
        if label not in known:
            problems.append(f"row {n} ({label or 'no label'}) names no class of the model")
        elif label in names:
            problems.append(f"row {n} ({label}) repeats a label")
        else:
            names[label] = name.strip()
    if problems:
        raise TrapkitError(f"{path}: {few(problems)}; its classes are {few(list(labels))} (names must match exactly)")
    return names


def imagenet_names(labels) -> list[str]:
    """ImageNet's labels are WordNet synonym lists ("tench, Tinca tinca"): each class's first synonym, or, where
    two classes share it in any case (maillot, Cardigan and cardigan), its synonyms joined by " / "."""
    first = [label.split(",")[0].strip().lower() for label in labels]
    return [label.split(",")[0].strip() if first.count(f) == 1 else " / ".join(s.strip() for s in label.split(","))
            for f, label in zip(first, labels)]


def _run_name(model_dir: Path | None, spec: ModelSpec) -> str:
    """The run's folder name (RUN for RUN/model), a model folder's name, or the spec's name."""
    if model_dir is None:
        return spec.name
    folder = model_dir.resolve()
    return (folder.parent if folder.name == "model" else folder).name or spec.name


def model_id_for(name: str, spec: ModelSpec) -> str:
    """A folder name, and a Hugging Face repository name, from the run's name: ASCII letters, digits, '-', '_', '.'."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")[:96]
    return slug or re.sub(r"[^A-Za-z0-9_.]+", "-", spec.name).strip("-.")[:96] or "trapkit-model"


# -- files ---------------------------------------------------------------------------------------

def inference_source() -> str:
    """inference.py: the template with trapkit's crop geometry copied in, so both cut the same square."""
    from trapkit import crops, images

    copied = (crops.usable_box, crops.square_region, crops._clamp)
    geometry = "\n\n".join(inspect.getsource(f).strip() + "\n" for f in copied)
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        crop_geometry=geometry, pad_value=repr(crops.PAD_VALUE), reducing_gap=repr(images.REDUCING_GAP))


def _weights(model, names: tuple[str, ...]) -> bytes:
    """The model's state dict as safetensors, its spec and AddaxAI names in the metadata (no pickled objects)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"format": "pt", SPEC_KEY: model.spec.to_json(), NAMES_KEY: json.dumps(names)})


def taxonomy_rows(spec: ModelSpec, names: tuple[str, ...]) -> tuple[list[dict], tuple[str, ...]]:
    """taxonomy.csv's rows (lowercase, species as the epithet) from the spec's taxonomy strings, else the names
    alone; and one line saying what it lacks."""
    rows = []
    for i, name in enumerate(names):
        path = parse_taxon(spec.taxonomy[i]).path if spec.taxonomy else ("",) * len(RANKS)
        rows.append({"model_class": name.lower(), **dict(zip(RANKS, path))})
    if spec.taxonomy:
        return rows, ()
    return rows, (f"{TAXONOMY}: the model carries no taxonomy, so its {len(names)} classes have no class, order, "
                  "family, genus or species (AddaxAI files them under 'other'); export with --taxonomy CSV "
                  "(label,taxonomy) to fill them",)


def taxonomy_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TAXONOMY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def manifest_entry(spec: ModelSpec, names: tuple[str, ...], settings: AddaxaiSettings, model_id: str, name: str,
                   metrics: dict | None) -> dict:
    """manifest.json: AddaxAI's required `ModelManifest` fields, and the classification ones it uses."""
    entry = {
        "model_id": model_id,
        "friendly_name": name,
        "emoji": REGION_EMOJI.get(settings.region or "global"),
        "env": ENV,
        "model_fname": WEIGHTS,
        "description": settings.description or default_description(spec, metrics),
        "description_short": f"Trained with trapkit \u2022 {spec.num_classes} classes",
        "developer": settings.developer,
        "info_url": settings.info_url,
        "min_app_version": MIN_APP_VERSION,
        "species_list": list(names),
        "input_size": spec.input_size,
    }
    if settings.region:
        entry["region"] = settings.region
    if settings.license:
        entry["license"] = settings.license
    return entry


def default_description(spec: ModelSpec, metrics: dict | None) -> str:
    text = (f"A {spec.num_classes}-class classifier exported by trapkit: {spec.arch} backbone, "
            f"{spec.input_size} px square crops of MegaDetector detections with a {spec.crop_margin:g} margin.")
    figures = validation_figures(metrics)
    return f"{text} {figures}" if figures else text


def validation_figures(metrics: dict | None) -> str:
    """One sentence of the run's last validation figures (RUN/model/metrics.json), or ''."""
    if not metrics or not isinstance(metrics.get("accuracy"), (int, float)):
        return ""
    parts = [f"accuracy {metrics['accuracy']:.3f}"]
    parts += [f"{label} {metrics[key]:.3f}" for key, label in (("macro_precision", "macro precision"),
                                                                ("macro_recall", "macro recall"))
              if isinstance(metrics.get(key), (int, float))]
    where = [f"{metrics['validation_images']} held-out validation images" if "validation_images" in metrics
             else "the held-out validation set"]
    if "round" in metrics:
        where.append(f"round {metrics['round']}")
    return f"Validation: {', '.join(parts)} on {', '.join(where)}."


def zoo_entry(manifest: dict) -> dict:
    """The models.json entry to propose: the manifest without what only the local install needs."""
    return {k: v for k, v in manifest.items() if k not in ("species_list", "input_size")}


def readme(spec: ModelSpec, names, manifest: dict, rows: list[dict], metrics: dict | None, here: str) -> str:
    model_id = manifest["model_id"]
    recall = (metrics or {}).get("per_class_recall") or {}
    table = "\n".join(
        f"| {i} | {_cell(name)} | {_cell(label)} | " + " | ".join(_cell(row[r]) for r in RANKS)
        + (f" | {recall[label]:.3f} |" if isinstance(recall.get(label), (int, float)) else " | n/a |")
        for i, (name, label, row) in enumerate(zip(names, spec.labels, rows), start=1))
    figures = validation_figures(metrics) or "No validation figures: the source has no metrics.json."
    return f"""# {manifest['friendly_name']} for AddaxAI

A {spec.num_classes}-class classifier ({spec.arch} backbone) exported by [trapkit]({INFO_URL}) for AddaxAI's
species classification step. It runs in AddaxAI's `pytorch` environment as it ships.

{figures}

## Install it in AddaxAI

Copy this folder into AddaxAI's classification models, named by the model ID `{model_id}`, and restart
AddaxAI: the model appears among the species classifiers.

```bash
cp -r {_shell_word(here)} ~/AddaxAI/models/cls/{model_id}
# Windows: %USERPROFILE%\\AddaxAI\\models\\cls\\{model_id}
```

| file | what it is |
| --- | --- |
| `{MANIFEST}` | the catalog entry AddaxAI reads |
| `{INFERENCE}` | `ModelInference`: trapkit's crop policy ({spec.input_size} px square, margin {spec.crop_margin:g}, {spec.interpolation}) and the network, rebuilt with timm or torchvision |
| `{WEIGHTS}` | the weights; the model spec and class names are in its metadata |
| `{TAXONOMY}` | each class's class, order, family, genus and species |

AddaxAI decodes each photo in full, where `trapkit classify` decodes a JPEG at the reduced scale its crops
allow, so crops differ by a few levels: expect the same top-1 for 99% or more of the detections and
confidences a little apart (trapkit's docs/addaxai.md has the figures).

## Propose it to the AddaxAI model zoo

The zoo is `models.json` in github.com/PetervanLunteren/AddaxAI; its maintainer hosts each model's files on
Hugging Face. Propose this entry under `"cls"` and send this folder:

```json
{json.dumps(zoo_entry(manifest), indent=2, ensure_ascii=False)}
```

## Classes

| id | AddaxAI name | trapkit label | class | order | family | genus | species | recall |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{table}
"""


def _shell_word(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_.-]+", text) else "'" + text.replace("'", "'\\''") + "'"


# -- the check -----------------------------------------------------------------------------------

def load_inference(folder: Path):
    """The folder's `ModelInference`, loaded from its inference.py as AddaxAI loads it, model loaded."""
    spec = importlib.util.spec_from_file_location(f"trapkit_addaxai_{id(folder)}", folder / INFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inference = module.ModelInference(folder, folder / WEIGHTS)
    inference.load_model()
    return inference


def check_against_trapkit(model, folder: Path, tolerance: float) -> tuple[float, int]:
    """(max |probs diff|, crops): the folder's inference.py against trapkit on the bundled photos' detections.

    Its crops of each photo as AddaxAI opens it (stored orientation, RGB) must be trapkit's crops of the
    decoded upright photo byte for byte, and its probabilities for them trapkit's model's within `tolerance`.
    """
    import numpy as np
    import torch
    from PIL import Image

    from trapkit import detections as md
    from trapkit.images import open_image
    from trapkit.prepare import Preprocessing, crops_from_image
    from trapkit.samples import SAMPLES_DIR

    inference = load_inference(folder)
    prep = Preprocessing.from_spec(model.spec)
    doc = md.load_detections(SAMPLES_DIR / "md_v5a_detections.json")
    ours, theirs = [], []
    for i, dets in sorted(md.qualifying(doc, prep.threshold, prep.categories).items()):
        path = SAMPLES_DIR / doc["images"][i]["file"]
        boxes = [doc["images"][i]["detections"][j]["bbox"] for j in dets]
        ours.append(crops_from_image(open_image(path)[0], boxes, prep))
        with Image.open(path) as stored:
            image = stored.convert("RGB")
        theirs += [inference.get_tensor(inference.get_crop(image, tuple(box))) for box in boxes]
    ours, theirs = np.concatenate(ours), np.stack(theirs)
    if not np.array_equal(ours, theirs):
        raise TrapkitError("the AddaxAI folder's crops differ from trapkit's; nothing written. Re-run with -v and "
                           "report it")
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(ours))[0].numpy()
    got = np.array([[p for _, p in result] for result in inference.classify_batch(theirs)], dtype=np.float32)
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= tolerance:
        raise TrapkitError(f"the AddaxAI folder's model differs from trapkit's by {diff:.2e} in probabilities "
                           f"(tolerance {tolerance:.0e}); nothing written. Re-run with -v and report it")
    return diff, len(ours)
