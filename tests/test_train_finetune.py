"""Fine-tuning pieces: triplet mining, class-balanced batches, augmentations on uint8 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from trapkit.train.finetune import augmentations, balanced_batches, triplet_loss


@pytest.mark.parametrize("mining", ["batch-hard", "semi-hard"])
def test_triplet_loss_zero_when_classes_are_apart_and_positive_when_mixed(mining):
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    apart = F.normalize(torch.eye(3)[y] + 0.01 * torch.randn(6, 3), dim=1)
    assert float(triplet_loss(apart, y, 0.2, mining)) == pytest.approx(0.0, abs=1e-6)
    mixed = F.normalize(torch.eye(3)[torch.tensor([0, 1, 1, 2, 2, 0])], dim=1)
    assert float(triplet_loss(mixed, y, 0.2, mining)) > 0.1


def test_semi_hard_is_never_harder_than_batch_hard():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(32, 8), dim=1).requires_grad_()
    y = torch.arange(32) % 4
    hard, semi = triplet_loss(z, y, 0.2, "batch-hard"), triplet_loss(z, y, 0.2, "semi-hard")
    assert semi.item() <= hard.item() + 1e-6
    semi.backward()
    assert torch.isfinite(z.grad).all()


def test_balanced_batches_draw_p_classes_times_k():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 1 + [3] * 10)
    for idx in balanced_batches(labels, batch_size=12, classes_per_batch=3, steps=20, rng=np.random.default_rng(0)):
        counts = np.bincount(labels[idx], minlength=4)
        assert len(idx) == 12 and sorted(counts[counts > 0]) == [4, 4, 4]


def test_augmentations_keep_uint8_shape():
    x = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    out = augmentations(32)(x)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


def test_finetune_that_reads_no_image_is_an_error_not_a_silent_no_op(tmp_path):
    from trapkit.errors import TrapkitError
    from trapkit.spec import ModelSpec
    from trapkit.train.finetune import finetune
    from trapkit.train.model import build_model
    from trapkit.train.run import Item
    from trapkit.train.settings import FinetuneSettings

    # A folder on an unplugged drive: nothing can be read (whole images and detections alike).
    items = [Item(tmp_path / f"gone_{i}.jpg", None if i % 2 else (0.1, 0.1, 0.5, 0.5)) for i in range(4)]
    model = build_model(ModelSpec("test_efficientnet", ("a", "b"), feat_dim=8, head_hidden=(), input_size=32))
    with pytest.raises(TrapkitError, match="fine-tuning could not read the labelled images"):
        finetune(model, items, np.array([0, 0, 1, 1]), 2, FinetuneSettings(epochs=1))
