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
            batch_size: int = 64, workers: int = 2, cluster=None) -> dict[int, str]:
    """Embed every image in `paths` into `out` ((N, D) float16 .npy). Returns {row: reason} for unreadable rows.

    `model` is a `Classifier` (its `normalize` + `embedder` are used). Rows
    flagged in `skip` (known unreadable) are left as zeros; the first
    len(reuse) rows are copied from `reuse` (same embedder, images added later).
    `cluster` (`trapkit.cluster.ClusterSettings`): embed on that Ray cluster instead of here.
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
    if cluster is not None:
        failures = embed_on_cluster(cluster, model, [(int(i), paths[i], None) for i in todo], prep, emb, batch_size)
        todo = todo[:0]  # every row done there: the loop below has nothing to do
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


def embed_on_cluster(cluster, model, rows: list[tuple[int, Path, tuple | None]], prep: Preprocessing,
                     emb: np.ndarray, batch_size: int) -> dict[int, str]:
    """Embed (row, image, box or None for the whole image) `rows` into `emb` on a Ray cluster; {row: reason}.

    `trapkit.cluster` prepares each image once for all its rows on CPU tasks, through the core's one
    preparation path, and `TorchEmbedder` actors (the model's own weights, sent through Ray's object
    store; a GPU each where there are GPUs) embed the crops; this process writes the cache, so it is a
    local run's within float16 rounding.
    """
    from safetensors.torch import save

    from trapkit.cluster import connect

    groups: dict[tuple[Path, bool], list[tuple[int, tuple | None]]] = {}  # (image, whole?) -> its rows
    for row, path, box in rows:
        groups.setdefault((Path(path).absolute(), box is None), []).append((row, box))
    keys = list(groups)
    work = [(k, str(path), None if whole else [list(box) for _, box in groups[(path, whole)]])
            for k, (path, whole) in enumerate(keys)]
    failures: dict[int, str] = {}
    weights = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    with connect(cluster) as ray_cluster, tqdm(total=len(rows), desc="embedding (ray)", unit="item", disable=None,
                                               leave=False) as bar:
        ray_cluster.check_visible(None, [str(path) for path, _ in keys])
        state = ray_cluster.ray.put(weights)
        for result in ray_cluster.map_prepared(work, prep, TorchEmbedder, (model.spec.to_json(), state), root=None,
                                               batch_size=batch_size):
            path, whole = keys[result.key]
            members = [row for row, _ in groups[(path, whole)]]
            if result.failure:
                failures.update(dict.fromkeys(members, result.message))
                log.warning("skipping unreadable image: %s", result.message)
            else:
                z = result.outputs["embedding"].astype(np.float16)  # (k, D): one crop per box, or the whole image
                emb[members] = z[0] if whole else z
            bar.update(len(members))
    return failures


class TorchEmbedder:
    """In each inference actor: the run's model rebuilt from its spec and weights (safetensors bytes), on the
    actor's GPU when Ray gave it one; crops (N, S, S, 3) uint8 -> {"embedding": (N, D) float32}."""

    def __init__(self, spec_json: str, weights):
        import ray
        from safetensors.torch import load

        from trapkit.spec import ModelSpec
        from trapkit.train.model import build_model

        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        torch.set_num_threads(1)  # more cores get more actors (each counts as half a CPU)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build_model(ModelSpec.from_json(spec_json), "none").eval()
        self.model.load_state_dict(load(weights), strict=True)
        self.model.to(self.device)

    @torch.no_grad()
    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        return {"embedding": self.model.embedder(self.model.normalize(x)).float().cpu().numpy()}


def open_embeddings(path: Path) -> np.ndarray:
    """The cached (N, D) float16 array, memory-mapped read-only."""
    return np.load(path, mmap_mode="r")
