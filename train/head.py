"""The MLP head (230, 100 hidden) on cached embeddings: mini-batches, early stopping, growing for new classes.

Trained in PyTorch (not scikit-learn) so it is the same `MLPHead` module the
exported ONNX graph runs after the embedder.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch.nn import functional as F

from trapkit.train.model import MLPHead
from trapkit.train.settings import HeadSettings

log = logging.getLogger(__name__)

CHUNK = 65536  # rows per chunk when casting float16 memmaps or predicting
MAX_STEPS_PER_EPOCH = 200


def as_float32(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def grow(head: MLPHead, num_classes: int) -> MLPHead:
    """A copy of `head` with more outputs; existing classes keep their weights, new rows start small."""
    if num_classes == head.num_classes:
        return copy.deepcopy(head)
    new = MLPHead(head.in_dim, head.hidden, num_classes)
    state = head.state_dict()
    last = f"layers.{len(head.layers) - 1}"
    with torch.no_grad():
        for name, tensor in new.state_dict().items():
            old = state[name]
            if name.startswith(last + "."):
                tensor[: old.shape[0]] = old
            else:
                tensor.copy_(old)
    return new


def fit_head(x: np.ndarray, y: np.ndarray, num_classes: int, hidden: tuple[int, ...], settings: HeadSettings,
             seed: int = 0, init: MLPHead | None = None) -> MLPHead:
    """Train an MLPHead on (N, D) embeddings and (N,) int labels.

    With 50+ examples, 10% are held out for early stopping on their loss;
    fewer, and training stops when the training loss stops improving. The
    best epoch's weights are returned. `init` warm-starts (grown if needed).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, settings.threads))
    try:
        return _fit(x, y, num_classes, hidden, settings, seed, init)
    finally:
        torch.set_num_threads(threads)


def _fit(x, y, num_classes, hidden, settings, seed, init) -> MLPHead:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_t, y_t = as_float32(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(y_t)
    head = grow(init, num_classes) if init is not None and init.in_dim == x_t.shape[1] else \
        MLPHead(x_t.shape[1], hidden, num_classes)
    perm = torch.randperm(n, generator=gen)
    n_hold = n // 10 if n >= 50 else 0
    hold, train = perm[:n_hold], perm[n_hold:]
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # At most ~200 steps an epoch: big labelled sets get bigger batches (better BLAS use, fewer steps).
    batch_size = max(settings.batch_size, -(-len(train) // MAX_STEPS_PER_EPOCH))
    best, best_state, stale = float("inf"), copy.deepcopy(head.state_dict()), 0
    epoch = -1
    for epoch in range(settings.max_epochs):
        head.train()
        order = train[torch.randperm(len(train), generator=gen)]
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(head(x_t[idx]), y_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        head.eval()
        if n_hold:
            with torch.no_grad():
                score = float(F.cross_entropy(head(x_t[hold]), y_t[hold]))
        else:
            score = total / max(len(order), 1)
        if score < best - 1e-4:
            best, best_state, stale = score, copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    log.debug("head: %d examples, stopped after %d epochs, best %s %.4f", n, epoch + 1,
              "held-out loss" if n_hold else "training loss", best)
    head.load_state_dict(best_state)
    head.epochs_trained = epoch + 1  # for reports and benchmarks
    return head.eval()


@torch.no_grad()
def predict(head: MLPHead, x: np.ndarray) -> np.ndarray:
    """(N, C) float32 probabilities, computed in chunks (x may be a float16 memmap)."""
    head.eval()
    out = np.empty((len(x), head.num_classes), dtype=np.float32)
    for start in range(0, len(x), CHUNK):
        out[start:start + CHUNK] = torch.softmax(head(as_float32(x[start:start + CHUNK])), dim=1).numpy()
    return out
