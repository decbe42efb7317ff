"""Backbone registry and weight sources, on real weights shipped in packages (no network)."""

import numpy as np
import pytest
import torch

from trapkit.errors import TrapkitError
from trapkit.images import open_image, to_model_input
from trapkit.spec import ModelSpec
from trapkit.train.backbones import backbone_preprocessing, build_backbone
from trapkit.train.model import build_model, imagenet_lite0, imagenet_model, load_model, save_model

# ImageNet-1k index ranges: dogs 151-268, big cats 286-293 (leopard 288, jaguar 290), elephants 385-386 + tusker 101.
DOG_CLASSES = range(151, 269)
CAT_CLASSES = range(281, 294)
ELEPHANT_CLASSES = {101, 385, 386}


@pytest.fixture(scope="module")
def lite0():
    return imagenet_lite0()


def crop(samples_dir, name, bbox):
    img, _ = open_image(samples_dir / name)
    x, y, w, h = bbox[0] * img.width, bbox[1] * img.height, bbox[2] * img.width, bbox[3] * img.height
    side = max(w, h)
    cx, cy = x + w / 2, y + h / 2
    return img.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)))


def top1(model, img):
    x = torch.from_numpy(to_model_input(img, 224, "squash").copy())[None]
    with torch.inference_mode():
        probs, _ = model(x)
    return int(probs[0].argmax())


def test_offline_lite0_recognises_real_camera_trap_animals(lite0, samples_dir):
    import json

    md = {im["file"]: im["detections"] for im in json.loads((samples_dir / "md_v5a_detections.json").read_text())["images"]}
    assert top1(lite0, crop(samples_dir, "domestic_dog.jpg", md["domestic_dog.jpg"][0]["bbox"])) in DOG_CLASSES
    assert top1(lite0, crop(samples_dir, "ocelot.jpg", md["ocelot.jpg"][0]["bbox"])) in CAT_CLASSES
    assert top1(lite0, crop(samples_dir, "african_elephants.jpg", md["african_elephants.jpg"][0]["bbox"])) in ELEPHANT_CLASSES
    assert lite0.spec.num_classes == 1000 and lite0.spec.mean == (0.5, 0.5, 0.5)


def test_headless_backbones_report_their_width():
    assert build_backbone("test_efficientnet", "none")(torch.zeros(2, 3, 32, 32)).shape[0] == 2
    tv = build_backbone("tv:resnet18", "none")
    assert tv.num_features == 512 and tv(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    assert backbone_preprocessing("tf_efficientnet_lite0", "lite0-offline").mean == (0.5, 0.5, 0.5)


def test_local_weight_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = build_backbone("test_resnet", "none")
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    for f in ("w.safetensors", "w.pth"):
        loaded = build_backbone("test_resnet", str(tmp_path / f)).eval()
        torch.testing.assert_close(loaded(x), src.eval()(x))


def test_unknown_backbone_and_bad_weights_are_user_errors(tmp_path):
    with pytest.raises(TrapkitError, match="unknown backbone 'resnet_9000'"):
        build_backbone("resnet_9000", "none")
    with pytest.raises(TrapkitError, match="unknown torchvision backbone"):
        build_backbone("tv:nonet", "none")
    with pytest.raises(TrapkitError, match="does not exist"):
        build_backbone("test_resnet", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(TrapkitError, match="could not be read"):
        build_backbone("test_resnet", str(tmp_path / "junk.pth"))
    torch.save(build_backbone("test_efficientnet", "none").state_dict(), tmp_path / "other.pth")
    with pytest.raises(TrapkitError, match="does not fit"):
        build_backbone("test_resnet", str(tmp_path / "other.pth"))
    with pytest.raises(TrapkitError, match="only fits"):
        build_backbone("resnet18", "lite0-offline")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": build_backbone("test_resnet", "none")}, tmp_path / "pickled.pth")  # whole module, not a state dict
    with pytest.raises(TrapkitError, match="could not be read|no state dict"):
        build_backbone("test_resnet", str(tmp_path / "pickled.pth"))


def test_saved_model_reloads_identically(tmp_path):
    spec = ModelSpec(arch="test_efficientnet", labels=("a", "b", "c"), feat_dim=8, head_hidden=(6,), input_size=32)
    model = build_model(spec).eval()
    save_model(tmp_path, model)
    again = load_model(tmp_path)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    probs, emb = model(x)
    torch.testing.assert_close(again(x)[0], probs)
    assert probs.shape == (3, 3) and emb.shape == (3, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))  # L2-normalised embedding
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_imagenet_model_from_a_local_full_state_dict(tmp_path):
    import timm

    full = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    torch.save(full.state_dict(), tmp_path / "full.pth")
    model = imagenet_model("test_resnet", str(tmp_path / "full.pth"))
    x = torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8)
    expected = torch.softmax(full.eval()(model.normalize(x)), dim=1)
    torch.testing.assert_close(model(x)[0], expected, atol=1e-5, rtol=1e-4)
