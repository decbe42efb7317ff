"""The MLP head (230, 100 hidden) on cached embeddings: standardised inputs, a floor of steps, early stopping.

Trained in PyTorch (not scikit-learn) so it is the same `MLPHead` module the
exported ONNX graph runs after the embedder.

Why it trains the way it does (issue 15; figures in docs/model-quality.md):

- Inputs are L2-normalised embeddings: every dimension spreads by ~0.02-0.03
  around a common direction (0.004 for a random backbone). The head trains on
  standardised inputs, (x - per-dimension mean) / one overall spread, and the
  affine map is folded into its first Linear afterwards, so the saved module,
  its state-dict keys and the exported graph are unchanged. One spread for all
  dimensions (not one each) keeps the embedding's geometry and stays defined
  for a seed of a few images.
- A seed of 80 images is one full batch: counting epochs, it got ~10
  optimiser steps and stayed at chance. The head takes at least `min_steps`
  steps (full-batch while the set fits one batch).
- A held-out 10% for early stopping is kept once 5,000 examples are labelled
  (500 held out); below that the held-out loss of 50-500 images is noise that
  also costs a tenth of the labels (issue 26), and the head trains exactly
  `min_steps` steps. Big sets stop on the held-out loss (patience in epochs,
  at most ~200 steps an epoch).
- An L2 penalty on the weights (`l2`, added to the loss as a logistic
  regression's is): +1 to +2 points on 50-80 digits, and calibrated
  probabilities (expected calibration error 0.04-0.07 where label smoothing,
  which gains as much accuracy, gave 0.13-0.20: under-confident).
"""

from __future__ import annotations

import copy
import logging
import math

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


def standardisation(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(shift (D,) float64, scale): the per-dimension mean and one overall spread of (N, D) `x`.

    The spread is the root mean per-dimension variance; 1.0 when it is zero or
    undefined (one example, identical rows), so nothing is divided by zero.
    """
    shift = np.zeros(x.shape[1])
    sq = np.zeros(x.shape[1])
    for start in range(0, len(x), CHUNK):  # float16 memmaps: cast a chunk at a time
        chunk = np.asarray(x[start:start + CHUNK], dtype=np.float64)
        shift += chunk.sum(axis=0)
        sq += (chunk ** 2).sum(axis=0)
    n = max(len(x), 1)
    shift /= n
    scale = math.sqrt(max(float(np.mean(sq / n - shift ** 2)), 0.0))
    return shift, (scale if scale > 1e-8 else 1.0)


def rescale_input(head: MLPHead, shift: np.ndarray, scale: float, inverse: bool = False) -> MLPHead:
    """A copy of `head` whose first Linear reads `(x - shift) / scale` as `head` reads `x` (or, with
    `inverse`, reads raw `x` as `head` reads standardised inputs). The same function, reparametrised:

        W x + b  =  (W * scale) (x - shift) / scale + (b + W shift)
    """
    head = copy.deepcopy(head)
    first = head.layers[0]
    w, b = first.weight.detach().double(), first.bias.detach().double()  # (H, D), (H,)
    s = torch.from_numpy(np.asarray(shift, np.float64))
    if inverse:  # trained on (x - shift) / scale -> reads x
        w_new = w / scale
        b_new = b - w_new @ s
    else:  # reads x -> reads (x - shift) / scale
        w_new = w * scale
        b_new = b + w @ s
    with torch.no_grad():
        first.weight.copy_(w_new.float())
        first.bias.copy_(b_new.float())
    return head


def fit_head(x: np.ndarray, y: np.ndarray, num_classes: int, hidden: tuple[int, ...], settings: HeadSettings,
             seed: int = 0, init: MLPHead | None = None,
             extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> MLPHead:
    """Train an MLPHead on (N, D) embeddings and (N,) int labels; it reads raw embeddings.

    At least `settings.min_steps` optimiser steps. With `settings.holdout_min`
    or more examples, 10% are held out and training stops once their loss has
    not improved for `patience` epochs (the best epoch's weights are kept);
    fewer, and it trains exactly `min_steps` steps. `init` warm-starts (grown
    if needed). `extra` = (x (P, D), labels (P,), weights (P,)): weighted examples
    trained on beside the labels (`trapkit.train.semi`'s pseudo-labels), never
    held out; the loss is then the weighted mean, each label weighing 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, settings.threads))
    try:
        return _fit(x, y, num_classes, hidden, settings, seed, init, extra)
    finally:
        torch.set_num_threads(threads)


def _fit(x, y, num_classes, hidden, settings, seed, init, extra) -> MLPHead:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    shift, scale = standardisation(x)
    x_t = (as_float32(x) - torch.from_numpy(shift.astype(np.float32))) / scale  # (N, D) standardised
    y_t = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(y_t)
    if init is not None and init.in_dim == x_t.shape[1]:
        head = grow(rescale_input(init, shift, scale), num_classes)
    else:
        head = MLPHead(x_t.shape[1], hidden, num_classes)
    perm = torch.randperm(n, generator=gen)
    n_hold = n // 10 if n >= settings.holdout_min else 0
    hold, train = perm[:n_hold], perm[n_hold:]
    weight = None
    if extra is not None:  # standardised as the labels are; trained on, never held out
        x_extra, y_extra, w_extra = extra
        x_t = torch.cat([x_t, (as_float32(x_extra) - torch.from_numpy(shift.astype(np.float32))) / scale])
        y_t = torch.cat([y_t, torch.from_numpy(np.asarray(y_extra, dtype=np.int64))])
        weight = torch.cat([torch.ones(n), torch.from_numpy(np.asarray(w_extra, dtype=np.float32))])
        train = torch.cat([train, torch.arange(n, len(y_t))])
    weights = [m.weight for m in head.layers if isinstance(m, torch.nn.Linear)]
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # Full-batch steps while the set fits one batch; at most ~200 steps an epoch for big sets (bigger batches).
    batch_size = min(max(settings.batch_size, -(-len(train) // MAX_STEPS_PER_EPOCH)), max(len(train), 1))
    min_epochs = -(-settings.min_steps // -(-len(train) // batch_size))
    best, best_state, stale = float("inf"), copy.deepcopy(head.state_dict()), 0
    epoch, steps = -1, 0
    for epoch in range(max(settings.max_epochs, min_epochs)):
        head.train()
        order = train[torch.randperm(len(train), generator=gen)]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if weight is None:
                loss = F.cross_entropy(head(x_t[idx]), y_t[idx])
            else:
                loss = (weight[idx] * F.cross_entropy(head(x_t[idx]), y_t[idx], reduction="none")).sum() / \
                    weight[idx].sum().clamp_min(1e-12)
            if settings.l2:
                loss = loss + settings.l2 * sum((w ** 2).sum() for w in weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        if not n_hold:
            if epoch + 1 >= min_epochs:
                break
            continue
        head.eval()
        with torch.no_grad():
            score = float(F.cross_entropy(head(x_t[hold]), y_t[hold]))
        if score < best - 1e-4:
            best, best_state, stale = score, copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
            if stale >= settings.patience and epoch + 1 >= min_epochs:
                break
    if n_hold:
        head.load_state_dict(best_state)
    log.debug("head: %d examples, %d steps in %d epochs%s", n, steps, epoch + 1,
              f", best held-out loss {best:.4f} ({n_hold} held out)" if n_hold else "")
    head = rescale_input(head, shift, scale, inverse=True)
    head.epochs_trained, head.steps_trained = epoch + 1, steps  # for reports and benchmarks
    return head.eval()


@torch.no_grad()
def predict(head: MLPHead, x: np.ndarray) -> np.ndarray:
    """(N, C) float32 probabilities, computed in chunks (x may be a float16 memmap)."""
    head.eval()
    out = np.empty((len(x), head.num_classes), dtype=np.float32)
    for start in range(0, len(x), CHUNK):
        out[start:start + CHUNK] = torch.softmax(head(as_float32(x[start:start + CHUNK])), dim=1).numpy()
    return out
