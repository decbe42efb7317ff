"""Embedding extraction into a float16 memory-mapped NumPy cache.

One array per embedder version, row i = manifest row i, so a million-image
pool costs 512 MB at 256 dimensions and never has to fit in RAM as float32.
The file is written under a temporary name and renamed when complete: a
killed extraction leaves no half-filled cache that looks finished.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trapkit.images import ImageReadError
from trapkit.prepare import Preprocessing, prepare_image

log = logging.getLogger(__name__)


def load_batch(paths: list[Path], prep: Preprocessing, pool: ThreadPoolExecutor):
    """(stacked (n_ok, S, S, 3) uint8, ok flags, failure reasons) for `paths`, decoded in threads
    through the core's one preparation path, exactly as `classify` prepares them."""
    size = prep.input_size

    def one(p):
        try:
            return prepare_image(p, None, prep).crops[0], None
        except ImageReadError as e:
            return None, str(e)

    results = list(pool.map(one, paths))
    ok = [r[0] is not None for r in results]
    arrays = [r[0] for r in results if r[0] is not None]
    stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return stacked, ok, [r[1] for r in results]


@torch.no_grad()
def extract(model, paths: list[Path], out: Path, skip: np.ndarray | None = None, reuse: np.ndarray | None = None,
            batch_size: int = 64, workers: int = 2) -> dict[int, str]:
    """Embed every image in `paths` into `out` ((N, D) float16 .npy). Returns {row: reason} for unreadable rows.

    `model` is a `Classifier` (its `normalize` + `embedder` are used). Rows
    flagged in `skip` (known unreadable) are left as zeros; the first
    len(reuse) rows are copied from `reuse` (same embedder, images added later).
    """
    prep = Preprocessing.from_spec(model.spec)
    model.eval()
    n, dim = len(paths), model.embedder.out_dim
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
    failures: dict[int, str] = {}
    skip = np.zeros(n, bool) if skip is None else skip.copy()
    if reuse is not None:
        emb[: len(reuse)] = reuse
        skip[: len(reuse)] = True
    todo = np.flatnonzero(~skip)
    with ThreadPoolExecutor(workers) as pool:
        for start in tqdm(range(0, len(todo), batch_size), desc="embedding", unit="batch",
                          disable=None, leave=False):
            rows = todo[start:start + batch_size]
            images, ok, reasons = load_batch([paths[i] for i in rows], prep, pool)
            for i, reason in zip(rows, reasons):
                if reason is not None:
                    failures[int(i)] = reason
                    log.warning("skipping unreadable image: %s", reason)
            if len(images):
                z = model.embedder(model.normalize(torch.from_numpy(images)))  # (n_ok, D)
                emb[rows[np.array(ok)]] = z.numpy().astype(np.float16)
    emb.flush()
    del emb
    with open(tmp, "rb+") as f:  # durable before the rename publishes it
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return failures


def open_embeddings(path: Path) -> np.ndarray:
    """The cached (N, D) float16 array, memory-mapped read-only."""
    return np.load(path, mmap_mode="r")
