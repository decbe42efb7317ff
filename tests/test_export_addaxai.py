"""`trapkit export --addaxai DIR`: a folder AddaxAI's classification worker runs as it is, in an environment
with AddaxAI's packages and no onnxruntime or trapkit, giving `trapkit classify`'s answers."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_line_error
from PIL import Image
from train_helpers import detection_flags, make_detection_trees

import addaxai_env
from trapkit.app.cli import main
from trapkit.spec import ModelSpec

WORKER = Path(__file__).resolve().parent / "addaxai_worker.py"
# AddaxAI's ModelManifest (backend/app/ml/schemas/model_manifest.py), read by hand: the fields without a
# default, and the types of those trapkit fills.
REQUIRED = {"model_id": str, "friendly_name": str, "env": str, "model_fname": str, "description": str,
            "developer": str, "info_url": str, "min_app_version": str}
OPTIONAL = {"emoji": str, "description_short": str, "species_list": list, "region": str, "input_size": int,
            "license": str, "owner": str, "citation": str, "hf_repo": str, "full_image_cls": bool}
MODEL_REGIONS = {"global", "africa", "americas", "asia", "europe", "oceania"}
CONF_TOLERANCE = 0.02  # AddaxAI's own, across machines


@pytest.fixture(scope="module")
def addaxai_python(tmp_path_factory) -> Path:
    python = addaxai_env.build(tmp_path_factory.mktemp("addaxai_env") / "env-pytorch")
    for absent in ("onnxruntime", "trapkit"):
        assert subprocess.run([str(python), "-I", "-c", f"import {absent}"], capture_output=True).returncode != 0
    return python


def run_worker(python: Path, folder: Path, items: list[dict], tmp_path: Path, **request) -> dict:
    """AddaxAI's way: `python WORKER MODEL_DIR MODEL_PATH input.json output.json`, as a subprocess."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="ascii"))
    request_path, answer_path = tmp_path / "input.json", tmp_path / "output.json"
    request_path.write_text(json.dumps({"items": items, **request}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([str(python), "-I", str(WORKER), str(folder), str(folder / manifest["model_fname"]),
                           str(request_path), str(answer_path)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(answer_path.read_text())


def classified(images: Path, detections: Path, model: Path, spec: ModelSpec, out: Path) -> list[dict]:
    """`trapkit classify`'s top-1 label and confidence for every detection it classified, and whether it decoded
    the detection's image at full scale (a JPEG is decoded at the reduced DCT scale its smallest crop allows)."""
    from trapkit.crops import min_decode_size
    from trapkit.images import draft_scale, read_header

    assert main(["classify", str(images), "--model", str(model), "--detections", str(detections),
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    found = []
    for im in doc["images"]:
        dets = [d for d in im.get("detections") or () if d.get("classifications")]
        path = images / im["file"]
        width, height = read_header(path).size
        boxes = [d["bbox"] for d in dets]
        full_scale = draft_scale((width, height), min_decode_size(boxes, width, height, spec.input_size,
                                                                   spec.crop_margin)) == 1
        for det in dets:
            class_id, conf = det["classifications"][0]
            found.append({"item": {"source": "image", "image_path": str(path), "bbox": det["bbox"]},
                          "label": doc["classification_categories"][class_id], "conf": conf,
                          "full_scale": full_scale})
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A small trained run on camera-trap-like frames, exported to ONNX and to an AddaxAI folder."""
    root = tmp_path_factory.mktemp("addaxai_run")
    trees = make_detection_trees(root / "trees", bursts_per_class=3)
    run = root / "lynx-study"
    assert main(["al", "init", str(run), *detection_flags(trees)]) == 0
    assert main(["export", str(run), "--out", str(root / "onnx"), "--addaxai", str(root / "addaxai"),
                 "--region", "europe", "--developer", "Lynx Lab"]) == 0
    return {"run": run, "onnx": root / "onnx", "folder": root / "addaxai", "trees": trees}


@pytest.mark.slow
def test_the_worker_runs_the_folder_without_onnxruntime_and_agrees_with_classify(trained, addaxai_python,
                                                                                samples_dir, tmp_path):
    trees, spec = trained["trees"], ModelSpec.load(trained["run"] / "model")
    expected = (classified(samples_dir, samples_dir / "md_v5a_detections.json", trained["onnx"], spec,
                           tmp_path / "a.json")
                + classified(trees["pool"], trees["pool_md"], trained["onnx"], spec, tmp_path / "b.json"))
    items = [e["item"] for e in expected]
    assert len(items) >= 40 and any(e["full_scale"] for e in expected) and not all(e["full_scale"] for e in expected)
    batch = run_worker(addaxai_python, trained["folder"], items, tmp_path, batch_size=4)
    one_by_one = run_worker(addaxai_python, trained["folder"], items, tmp_path, mode="per-crop")
    assert batch["mode"] == "batch" and one_by_one["mode"] == "per-crop" and batch["device"] == "CPU"
    assert batch["class_names"] == {str(i + 1): label for i, label in enumerate(spec.labels)}
    agree, full, reduced = 0, [], []
    for want, ours, single in zip(expected, batch["results"], one_by_one["results"]):
        assert ours["success"] and len(ours["classifications"]) == min(5, len(spec.labels))
        # One crop at a time gives what a batch gives.
        assert [n for n, _ in single["classifications"]] == [n for n, _ in ours["classifications"]]
        assert np.allclose([c for _, c in single["classifications"]], [c for _, c in ours["classifications"]],
                           atol=1e-5)
        name, conf = ours["classifications"][0]
        agree += name == want["label"]
        (full if want["full_scale"] else reduced).append(abs(conf - want["conf"]))
    assert agree / len(expected) >= 0.99, f"{agree} of {len(expected)} top-1 agree"
    # Where classify decodes in full, the crops are the same and so are the confidences; where it decodes at a
    # reduced DCT scale, crops differ by a few levels, and confidences by a little (docs/addaxai.md).
    assert max(full) <= CONF_TOLERANCE
    assert np.mean(reduced) <= 0.03 and max(reduced) <= 0.15, (np.mean(reduced), max(reduced))


def test_manifest_has_every_field_addaxai_requires_with_its_type(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "Serengeti 2024"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "model" / "metrics.json").write_text(json.dumps(
        {"round": 3, "accuracy": 0.875, "macro_precision": 0.8, "macro_recall": 0.85,
         "per_class_recall": {"bear": 0.5}, "validation_images": 40}))
    folder = tmp_path / "addaxai"
    assert main(["export", str(run), "--addaxai", str(folder), "--region", "africa", "--developer", "Lab",
                 "--license", "cc-by-4.0"]) == 0
    assert "Serengeti-2024" in capsys.readouterr().out
    raw = (folder / "manifest.json").read_bytes()
    assert raw.isascii()  # AddaxAI opens it with the platform's encoding (cp1252 on Windows)
    manifest = json.loads(raw)
    for field, kind in REQUIRED.items():
        assert isinstance(manifest.get(field), kind), field
    for field, value in manifest.items():
        assert field in REQUIRED or field in OPTIONAL, f"{field} is no ModelManifest field"
        assert isinstance(value, REQUIRED.get(field) or OPTIONAL[field]), field
    assert manifest["region"] in MODEL_REGIONS and manifest["env"] == "pytorch"
    assert manifest["model_id"] == "Serengeti-2024" and manifest["friendly_name"] == "Serengeti 2024"
    assert manifest["species_list"] == list(ModelSpec.load(tiny_model_dir).labels)
    assert manifest["input_size"] == 32 and manifest["developer"] == "Lab" and manifest["license"] == "cc-by-4.0"
    assert "accuracy 0.875" in manifest["description"]
    assert (folder / manifest["model_fname"]).is_file()
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "~/AddaxAI/models/cls/Serengeti-2024" in readme and "accuracy 0.875" in readme
    entry = json.loads(readme.split("```json\n")[1].split("```")[0])  # the models.json entry
    assert entry["model_id"] == "Serengeti-2024" and "species_list" not in entry
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "inference.py", "manifest.json",
                                                          "model.safetensors", "taxonomy.csv"]


def test_weights_are_safetensors_that_carry_the_spec_and_names(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    assert main(["export", str(tiny_model_dir), "--addaxai", str(tmp_path / "ax")]) == 0
    with safe_open(str(tmp_path / "ax" / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert any(k.startswith("embedder.backbone.") for k in f.keys())
    assert ModelSpec.from_json(meta["trapkit.spec"]) == ModelSpec.load(tiny_model_dir)
    assert json.loads(meta["addaxai.class_names"]) == list(ModelSpec.load(tiny_model_dir).labels)


def _taxonomy_rows(folder: Path) -> list[dict]:
    with open(folder / "taxonomy.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_taxonomy_csv_from_the_model_taxonomy_or_from_the_labels_with_the_gaps_said(tiny_model_dir, tmp_path,
                                                                                    capsys):
    strings = {"bear": ";mammalia;carnivora;ursidae;ursus;americanus;American Black Bear",
               "cattle": ";mammalia;cetartiodactyla;bovidae;bos;taurus;domestic cattle",
               "dog": ";mammalia;carnivora;canidae;canis;lupus familiaris;dog",
               "elephant": ";mammalia;proboscidea;elephantidae;;;elephant family",
               "ocelot": "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank"}
    taxonomy = tmp_path / "taxonomy.csv"
    with open(taxonomy, "w", newline="") as f:
        csv.writer(f).writerows([["label", "taxonomy"], *strings.items()])
    assert main(["export", str(tiny_model_dir), "--addaxai", str(tmp_path / "a"), "--taxonomy", str(taxonomy)]) == 0
    rows = _taxonomy_rows(tmp_path / "a")
    assert list(rows[0]) == ["model_class", "class", "order", "family", "genus", "species"]
    assert rows[0] == {"model_class": "bear", "class": "mammalia", "order": "carnivora", "family": "ursidae",
                       "genus": "ursus", "species": "americanus"}  # the epithet, lowercase
    assert rows[2]["species"] == "lupus familiaris" and rows[3]["genus"] == "" and rows[3]["family"] == "elephantidae"
    assert all(v == "" for k, v in rows[4].items() if k != "model_class")  # not a taxon: no ranks
    assert "taxonomy.csv" not in capsys.readouterr().out

    assert main(["export", str(tiny_model_dir), "--addaxai", str(tmp_path / "b")]) == 0
    rows = _taxonomy_rows(tmp_path / "b")
    assert [r["model_class"] for r in rows] == ["bear", "cattle", "dog", "elephant", "ocelot"]
    assert all(not any(v for k, v in r.items() if k != "model_class") for r in rows)
    said = [line for line in capsys.readouterr().out.splitlines() if "taxonomy.csv" in line]
    assert len(said) == 1 and "no taxonomy" in said[0] and "--taxonomy" in said[0]


def _exif_copy(src: Image.Image, orientation: int, path: Path) -> Path:
    """`src` stored as a camera would store it for `orientation` (EXIF 1-8): upright once turned."""
    stored = {1: src, 2: src.transpose(Image.FLIP_LEFT_RIGHT), 3: src.transpose(Image.ROTATE_180),
              4: src.transpose(Image.FLIP_TOP_BOTTOM), 5: src.transpose(Image.TRANSPOSE),
              6: src.transpose(Image.ROTATE_90), 7: src.transpose(Image.TRANSVERSE),
              8: src.transpose(Image.ROTATE_270)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=92, exif=exif)
    return path


def test_get_crop_turns_the_image_as_stored_and_cuts_trapkits_crop(tiny_model_dir, samples_dir, tmp_path):
    """AddaxAI hands over `Image.open(path).convert("RGB")`, unturned; MegaDetector's boxes are upright."""
    from trapkit.export.addaxai import load_inference
    from trapkit.images import open_image
    from trapkit.prepare import Preprocessing, crops_from_image, prepare_image

    assert main(["export", str(tiny_model_dir), "--addaxai", str(tmp_path / "ax")]) == 0
    inference = load_inference(tmp_path / "ax")
    prep = Preprocessing.from_spec(ModelSpec.load(tiny_model_dir))
    photo = Image.open(samples_dir / "ocelot.jpg").convert("RGB").resize((360, 240))
    # Boxes inside, at the edge and past it (padded), small and large (which `trapkit classify` decodes at a
    # reduced DCT scale, so its crops differ from the full decode's by a few levels).
    boxes = [[0.1, 0.2, 0.12, 0.1], [0.9, 0.85, 0.1, 0.15], [0.0, 0.0, 0.05, 0.2], [0.95, 0.3, 0.2, 0.1],
             [0.2, 0.1, 0.5, 0.6], [0.0, 0.5, 0.9, 0.5], [-0.1, -0.1, 1.2, 1.2]]
    for orientation in range(1, 9):
        path = _exif_copy(photo, orientation, tmp_path / f"o{orientation}.jpg")
        image = Image.open(path).convert("RGB")
        assert image.size == (photo.size if orientation < 5 else photo.size[::-1])
        for box in boxes:
            theirs = inference.get_tensor(inference.get_crop(image, tuple(box)))
            assert np.array_equal(crops_from_image(open_image(path)[0], [box], prep)[0], theirs), (orientation, box)
            levels = np.abs(prepare_image(path, [box], prep).crops[0].astype(int) - theirs).mean()  # classify's crop
            assert levels < 4, (orientation, box, levels)
        # A box with no area inside the frame is no crop (trapkit classifies none; AddaxAI records it invalid).
        assert inference.get_crop(image, (0.5, 0.5, 0.0, 0.1)) is None
        assert inference.get_crop(image, (1.2, 0.1, 0.1, 0.1)) is None


def test_a_torchvision_backbone_is_rebuilt_too(tmp_path):
    import torch

    from trapkit.export.addaxai import load_inference
    from trapkit.train.model import build_model, save_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="tv:resnet18", labels=("a", "b"), feat_dim=8, head_hidden=(), input_size=32,
                     interpolation="bicubic", crop_margin=0.3)
    model_dir = save_model(tmp_path / "model", build_model(spec, "none").eval())
    assert main(["export", str(model_dir), "--addaxai", str(tmp_path / "ax")]) == 0  # checked against trapkit
    assert load_inference(tmp_path / "ax").get_class_names() == {"1": "a", "2": "b"}


def test_imagenet_classes_get_their_first_synonym(tmp_path):
    from trapkit.train.model import imagenet_labels

    assert main(["export", "imagenet-lite0", "--addaxai", str(tmp_path / "ax")]) == 0
    manifest = json.loads((tmp_path / "ax" / "manifest.json").read_text())
    names = manifest["species_list"]
    assert len(names) == 1000 and len({n.lower() for n in names}) == 1000 and not any("," in n for n in names)
    labels = imagenet_labels()
    assert labels[0] == "tench, Tinca tinca" and names[0] == "tench"
    assert {names[i] for i, label in enumerate(labels) if label.startswith("maillot")} == {
        "maillot", "maillot / tank suit"}
    assert manifest["model_id"] == "imagenet-efficientnet-lite0" and manifest["input_size"] == 224


def _model_with_labels(tmp_path: Path, labels) -> Path:
    import torch

    from trapkit.train.model import build_model, save_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="test_efficientnet", labels=tuple(labels), feat_dim=8, head_hidden=(), input_size=32)
    return save_model(tmp_path / "run" / "model", build_model(spec, "none").eval()).parent


@pytest.mark.parametrize("labels, message", [
    (("Ñandú", "lynx"), "are not ASCII"),
    (("fox, red", "lynx"), "hold a comma"),
    (("Lynx", "lynx"), "differ only in case"),
])
def test_names_addaxai_would_mishandle_get_one_line_and_a_way_out(tmp_path, capsys, labels, message):
    run = _model_with_labels(tmp_path, labels)
    err = one_line_error(["export", str(run), "--addaxai", str(tmp_path / "ax")], capsys)
    assert message in err and "--addaxai-names" in err
    assert not (tmp_path / "ax").exists()  # nothing written, no empty folder left
    names = tmp_path / "names.csv"
    names.write_text(f"label,name\n\"{labels[0]}\",nandu or fox\n", encoding="utf-8")
    assert main(["export", str(run), "--addaxai", str(tmp_path / "ax"), "--addaxai-names", str(names)]) == 0
    manifest = json.loads((tmp_path / "ax" / "manifest.json").read_text())
    assert manifest["species_list"] == ["nandu or fox", labels[1]]


def test_bad_names_files_and_runs_without_labels_get_one_line(tmp_path, tiny_model_dir, capsys):
    run = _model_with_labels(tmp_path, ("lynx", "fox"))
    names = tmp_path / "names.csv"
    names.write_text("label,name\nwolf,grey wolf\n")
    err = one_line_error(["export", str(run), "--addaxai", str(tmp_path / "ax"), "--addaxai-names", str(names)],
                         capsys)
    assert "names no class of the model" in err
    names.write_text("label,name\nlynx,Luchs\u00e9\n", encoding="utf-8")
    assert "are not ASCII" in one_line_error(
        ["export", str(run), "--addaxai", str(tmp_path / "ax"), "--addaxai-names", str(names)], capsys)
    names.write_text("label,name\nlynx,\n", encoding="utf-8")
    assert "are empty" in one_line_error(
        ["export", str(run), "--addaxai", str(tmp_path / "ax"), "--addaxai-names", str(names)], capsys)
    # A run started without labels has no model until its first answers; a damaged spec lists no classes.
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "state.json").write_text("{}")
    assert "has no model yet" in one_line_error(["export", str(tmp_path / "fresh"), "--addaxai",
                                                 str(tmp_path / "ax")], capsys)
    empty = shutil.copytree(tiny_model_dir, tmp_path / "empty")
    spec = json.loads((empty / "spec.json").read_text())
    (empty / "spec.json").write_text(json.dumps({**spec, "labels": []}))
    assert "no class labels" in one_line_error(["export", str(empty), "--addaxai", str(tmp_path / "ax")], capsys)
    assert not (tmp_path / "ax").exists()


@pytest.mark.parametrize("flags, message", [
    (["--region", "africa"], "--region only applies with --addaxai DIR"),
    (["--developer", "x", "--info-url", "https://x"], "--developer, --info-url only apply with --addaxai DIR"),
    (["--addaxai", "AX", "--triton", "R"], "--triton only applies with --out DIR"),
    ([], "give --out DIR"),
    (["--addaxai", "AX", "--region", "mars"], "invalid choice"),
    (["--addaxai", "AX", "--developer", " "], "--developer is empty"),
])
def test_addaxai_flags_one_line_errors(tiny_model_dir, tmp_path, capsys, flags, message):
    flags = [str(tmp_path / f) if f in ("AX", "R") else f for f in flags]
    if "invalid choice" in message:
        with pytest.raises(SystemExit):
            main(["export", str(tiny_model_dir), *flags])
        assert message in capsys.readouterr().err
        return
    assert message in one_line_error(["export", str(tiny_model_dir), *flags], capsys)
