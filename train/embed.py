"""Embedding extraction into a float16 memory-mapped NumPy cache.

One array per embedder version, row i = manifest row i (an image, or one
detection in it), so a million-item pool costs 512 MB at 256 dimensions and
never has to fit in RAM as float32. The file is written under a temporary
name and renamed when complete: a killed extraction leaves no half-filled
cache that looks finished (and the next command removes its temporary file).

Model inputs come from the core's one preparation path
(`trapkit.prepare.prepare_image`) with the model spec's preprocessing: each
image is decoded once for all its detections, and a detection's crop is the
crop `trapkit classify` later feeds the exported graph, byte for byte.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trapkit.images import ImageReadError
from trapkit.prepare import Preprocessing, prepare_image
from trapkit.progress import progress
from trapkit.train.run import Item

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Model inputs for a list of items: `images` (n_ok, S, S, 3) uint8 for the items that could be read."""

    images: np.ndarray
    ok: list[bool]  # per item
    reasons: list[str | None]  # per item: why it could not be read
    times: list[str | None]  # per item: its image's EXIF capture time


def load_items(items: list[Item], prep: Preprocessing, pool: ThreadPoolExecutor) -> Batch:
    """Prepare `items` through the core's one preparation path, in threads, each image decoded ONCE for all
    its items in the list (its boxes together; a whole image alone)."""
    size = prep.input_size
    groups: dict[tuple[Path, bool], list[int]] = {}  # (image, whole?) -> positions in `items`
    for k, item in enumerate(items):
        groups.setdefault((item.path, item.box is None), []).append(k)

    def one(key):
        path, whole = key
        boxes = None if whole else [list(items[k].box) for k in groups[key]]
        try:
            prepared = prepare_image(path, boxes, prep)
        except ImageReadError as e:
            return None, None, str(e)
        return prepared.crops, prepared.time, None

    crops: list[np.ndarray | None] = [None] * len(items)
    reasons: list[str | None] = [None] * len(items)
    times: list[str | None] = [None] * len(items)
    for key, (out, taken, reason) in zip(groups, pool.map(one, list(groups))):
        for m, k in enumerate(groups[key]):  # a whole image listed twice (a batch drawn with replacement): one crop
            crops[k], times[k], reasons[k] = (out[0 if key[1] else m] if out is not None else None), taken, reason
    ok = [c is not None for c in crops]
    arrays = [c for c in crops if c is not None]
    stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return Batch(stacked, ok, reasons, times)


@dataclass
class Extracted:
    failures: dict[int, str] = field(default_factory=dict)  # row -> why it could not be read
    times: dict[int, str] = field(default_factory=dict)  # row -> EXIF capture time of its image (when it has one)


def _batches(items: list[Item], rows: np.ndarray, batch_size: int):
    """`rows` in order, cut into batches of about `batch_size` that never split one image's items."""
    start = 0
    while start < len(rows):
        end = min(start + batch_size, len(rows))
        while end < len(rows) and items[rows[end]].path == items[rows[end - 1]].path:
            end += 1
        yield rows[start:end]
        start = end


@torch.no_grad()
def extract(model, items: list[Item], out: Path, skip: np.ndarray | None = None, reuse: np.ndarray | None = None,
            batch_size: int = 64, workers: int = 2, cluster=None) -> Extracted:
    """Embed every item into `out` ((N, D) float16 .npy). Returns the unreadable rows and the images' times.

    `model` is a `Classifier` (its `normalize` + `embedder` are used, with its
    spec's preprocessing). Rows flagged in `skip` (known unreadable) are left
    as zeros; the first len(reuse) rows are copied from `reuse` (same
    embedder, items added later). `cluster` (`trapkit.cluster.ClusterSettings`):
    the items are embedded on that Ray cluster (`embed_on_cluster`), the cache still written here.
    """
    prep = Preprocessing.from_spec(model.spec)
    model.eval()
    n, dim = len(items), model.embedder.out_dim
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
    result = Extracted()
    skip = np.zeros(n, bool) if skip is None else skip.copy()
    if reuse is not None:
        emb[: len(reuse)] = reuse
        skip[: len(reuse)] = True
    todo = np.flatnonzero(~skip)
    if cluster is not None:
        embed_on_cluster(cluster, model, [(int(i), items[i]) for i in todo], prep, emb, result, batch_size)
        todo = todo[:0]  # every row done there: the loop below has nothing to do
    with ThreadPoolExecutor(workers) as pool, progress(len(todo), "embedding") as bar:
        for rows in _batches(items, todo, batch_size):
            batch = load_items([items[i] for i in rows], prep, pool)
            for i, reason, taken in zip(rows, batch.reasons, batch.times):
                if reason is not None:
                    result.failures[int(i)] = reason
                    log.warning("skipping unreadable image: %s", reason)
                elif taken:
                    result.times[int(i)] = taken
            if len(batch.images):
                z = model.embedder(model.normalize(torch.from_numpy(batch.images)))  # (n_ok, D)
                emb[rows[np.array(batch.ok)]] = z.numpy().astype(np.float16)
            bar.update(len(rows))
    emb.flush()
    del emb
    with open(tmp, "rb+") as f:  # durable before the rename publishes it
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return result


def embed_on_cluster(cluster, model, rows: list[tuple[int, Item]], prep: Preprocessing, emb: np.ndarray,
                     result: Extracted, batch_size: int) -> None:
    """Embed the (manifest row, item) `rows` into `emb` on a Ray cluster, recording failures and times in `result`.

    `trapkit.cluster` prepares each image once for all its rows on CPU tasks, through the core's one
    preparation path, and `TorchEmbedder` actors (the model's own weights, sent through Ray's object
    store; a GPU each where there are GPUs) embed the crops; this process writes the cache, so it is a
    local run's within float16 rounding.
    """
    from safetensors.torch import save

    from trapkit.cluster import connect

    groups: dict[tuple[Path, bool], list[tuple[int, Item]]] = {}  # (image, whole?) -> its rows, as load_items
    for row, item in rows:
        groups.setdefault((Path(item.path).absolute(), item.box is None), []).append((row, item))
    keys = list(groups)
    work = [(k, str(path), None if whole else [list(item.box) for _, item in groups[(path, whole)]])
            for k, (path, whole) in enumerate(keys)]
    weights = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    with connect(cluster) as ray_cluster, progress(len(rows), "embedding on the cluster") as bar:
        ray_cluster.check_visible(None, [str(path) for path, _ in keys])
        state = ray_cluster.ray.put(weights)
        for done in ray_cluster.map_prepared(work, prep, TorchEmbedder, (model.spec.to_json(), state), root=None,
                                             batch_size=batch_size):
            path, whole = keys[done.key]
            members = [row for row, _ in groups[(path, whole)]]
            if done.failure:
                result.failures.update(dict.fromkeys(members, done.message))
                log.warning("skipping unreadable image: %s", done.message)
            else:
                z = done.outputs["embedding"].astype(np.float16)  # (k, D): one crop per box, or the whole image
                emb[members] = z[0] if whole else z
                if done.time:
                    result.times.update(dict.fromkeys(members, done.time))
            bar.update(len(members))


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
