"""Fine-tuning the embedding model on the labelled images.

Softmax loss (a cosine classifier on the L2-normalised embedding) or triplet
loss with batch-hard or semi-hard mining; batches are class-balanced
(P classes x K images), and images get the reference augmentations (random
resized crop, flip, colour jitter, rotation, occasional grayscale) through
torchvision transforms v2, on the same uint8 pixels serving sees: a
detection's crop comes from the core's one preparation path, as in `classify`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trapkit.errors import TrapkitError
from trapkit.prepare import Preprocessing
from trapkit.progress import tracked
from trapkit.train.embed import load_items
from trapkit.train.run import Item
from trapkit.train.settings import FinetuneSettings

log = logging.getLogger(__name__)


def augmentations(size: int):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.8),
        v2.RandomRotation(15),
        v2.RandomGrayscale(p=0.1),
    ])


def balanced_batches(labels: np.ndarray, batch_size: int, classes_per_batch: int, steps: int,
                     rng: np.random.Generator):
    """Yield `steps` index arrays: P classes x K images each (with replacement inside small classes)."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    p = min(classes_per_batch, len(by_class))
    k = max(2, batch_size // p)  # two per class at least, so every anchor has a positive
    for _ in range(steps):
        chosen = rng.choice(len(by_class), size=p, replace=False)
        yield np.concatenate([rng.choice(by_class[c], size=k, replace=len(by_class[c]) < k) for c in chosen])


def triplet_loss(z: torch.Tensor, y: torch.Tensor, margin: float, mining: str) -> torch.Tensor:
    """z (B, D) L2-normalised, y (B,). Mean over anchors of relu(d(a,p) - d(a,n) + margin)."""
    d = torch.cdist(z, z)  # (B, B)
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool)
    pos_mask, neg_mask = same & ~eye, ~same
    if not neg_mask.any():
        return z.sum() * 0.0
    big = d.max().detach() + 1.0
    if mining == "batch-hard":
        d_pos = (d * pos_mask).max(dim=1).values  # hardest positive
        d_neg = (d + big * ~neg_mask).min(dim=1).values  # hardest negative
        return F.relu(d_pos - d_neg + margin).mean()
    # semi-hard (FaceNet): for each (a, p), the closest negative farther than p; else the farthest negative.
    dp = d[:, :, None]  # (B, B, 1): anchor a, positive p
    dn = d[:, None, :]  # (B, 1, B): anchor a, negative n
    semi = neg_mask[:, None, :] & (dn > dp)
    closest_semi = torch.where(semi, dn, big).min(dim=2).values  # (B, B)
    farthest_neg = (d * neg_mask).max(dim=1, keepdim=True).values.expand_as(closest_semi)
    d_neg = torch.where(semi.any(dim=2), closest_semi, farthest_neg)
    losses = F.relu(d - d_neg + margin)[pos_mask]
    return losses.mean() if len(losses) else z.sum() * 0.0


def _freeze_batchnorm(model: nn.Module) -> None:
    # Small class-balanced batches would wreck the pretrained running statistics.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def finetune(model, items: list[Item], labels: np.ndarray, num_classes: int, settings: FinetuneSettings,
             seed: int = 0, workers: int = 2) -> dict:
    """Train `model.embedder` (a `Classifier`'s) in place on labelled items. Returns {"steps", "loss"}.

    Images that fail to decode are dropped from their batch (the manifest
    already records them after the first embedding pass).
    """
    if settings.epochs <= 0:
        return {"steps": 0, "loss": None}
    if len(np.unique(labels)) < 2:
        raise TrapkitError("fine-tuning needs at least two classes with labelled images; label more classes")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    prep = Preprocessing.from_spec(model.spec)
    augment = augmentations(prep.input_size)
    embedder = model.embedder
    classifier = nn.Linear(embedder.out_dim, num_classes, bias=False) if settings.loss == "softmax" else None
    params = list(embedder.parameters()) + (list(classifier.parameters()) if classifier is not None else [])
    opt = torch.optim.AdamW(params, lr=settings.lr)
    steps = settings.epochs * max(1, int(np.ceil(len(labels) / settings.batch_size)))
    embedder.train()
    _freeze_batchnorm(embedder)
    losses = []
    with ThreadPoolExecutor(workers) as pool:
        batches = balanced_batches(labels, settings.batch_size, settings.classes_per_batch, steps, rng)
        for idx in tracked(batches, "fine-tuning", "step", total=steps):
            batch = load_items([items[i] for i in idx], prep, pool)
            if len(batch.images) < 2:
                continue
            y = torch.from_numpy(labels[idx][np.array(batch.ok)].astype(np.int64))
            x = torch.stack([augment(img) for img in torch.from_numpy(batch.images).permute(0, 3, 1, 2)])  # (B,3,S,S)
            z = embedder(model.normalize(x.permute(0, 2, 3, 1)))  # (B, D)
            if classifier is not None:
                # Cosine classifier: unit weights times a scale, since z is on the unit sphere.
                loss = F.cross_entropy(16.0 * F.linear(z, F.normalize(classifier.weight, dim=1)), y)
            else:
                loss = triplet_loss(z, y, settings.margin, settings.mining)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    embedder.eval()
    if not losses:
        raise TrapkitError(f"fine-tuning could not read the labelled images (2 per batch needed, {len(labels)} "
                           "given); check that their folders are there and readable")
    mean_loss = float(np.mean(losses[-10:]))
    log.info("fine-tuned the embedding: %d steps, %s loss %.4f", len(losses), settings.loss, mean_loss)
    return {"steps": len(losses), "loss": mean_loss}
