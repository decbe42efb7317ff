"""`trapkit classify --ray`: stages 1-3 of the batch classifier on a Ray cluster (`trapkit.cluster`).

The driver (this process) keeps everything a local run keeps: the detections
document, which detections are classified, the checkpoint, the assembled
MegaDetector JSON, CSV and summary (all `trapkit.serve.classify`'s own code).
The cluster does the work: images are decoded and cropped by the core's one
preparation path in CPU tasks, and classified by onnxruntime in an actor pool,
one session per actor (on a GPU each when the cluster has them). The model
file travels to the actors through Ray's object store, so only the images need
to be on shared storage.

Results come back in any order; every `checkpoint_every` finished images the
checkpoint is rewritten (atomically, same format as a local run; with
`--features`, that chunk's embeddings first, as a local run writes them), so a
killed driver resumes with `--resume`, on the cluster or locally. The features
table then has the local run's rows, grouped by the chunks the cluster
finished rather than in image order.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from pathlib import Path

import numpy as np

from trapkit.cluster import ClusterSettings, connect
from trapkit.errors import TrapkitError
from trapkit.prepare import Attempt

log = logging.getLogger(__name__)


class RayExecutor:
    """`classify_images(..., executor=RayExecutor(settings))`: the job's images classified on a Ray cluster."""

    def __init__(self, cluster: ClusterSettings):
        self.cluster = cluster

    def __call__(self, job, todo: list[int], done: dict) -> None:
        from tqdm import tqdm

        from trapkit.serve.classify import KILL_AFTER_ENV, KILL_SIGNAL_ENV

        model_path = getattr(job.runtime, "path", None)
        if model_path is None:
            raise TrapkitError("--ray runs the model on the cluster; give --model (a model.onnx), not --triton-url")
        root = Path(job.paths.images_dir).resolve()  # the same absolute path on every node
        # Video entries stay here: each video is decoded once for all its frames (one unit of the local stages).
        videos = [i for i in todo if i in job.frames or i in job.videos]
        if videos:
            log.info("%d video entries are classified on this machine, the photos on the cluster", len(videos))
            job.run(videos, done)
        work = [(i, *job.work(i)) for i in todo if i not in job.frames and i not in job.videos]
        if not work:
            return  # nothing left (a resumed run that had finished, or videos only): no cluster needed
        kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        features = job.features is not None  # --features: the graph's embedding comes back too
        with connect(self.cluster) as cluster:
            cluster.check_visible(root, [file for _, file, _ in work])
            model = cluster.ray.put(Path(model_path).read_bytes())
            results = cluster.map_prepared(work, job.prep, OnnxModel, (model, features), root=root,
                                           batch_size=job.settings.batch_size)
            chunk, embeddings = [], {}  # images since the last checkpoint, {(image, detection): (D,)}
            bar = tqdm(total=len(work), unit="img", desc="classify (ray)", disable=None)
            try:
                for n, item in enumerate(results, 1):
                    staged = job.staged(item.key, Attempt(None, item.time, item.warnings, item.failure, item.message))
                    keys = [(item.key, j) for j in staged.det_indices]  # outputs are (k, ...) in this order
                    done[str(item.key)] = job.record(staged, dict(zip(keys, item.outputs.get("probs", ()))))
                    embeddings.update(zip(keys, item.outputs.get("embedding", ())))
                    chunk.append(item.key)
                    bar.update()
                    if kill_after and n >= kill_after:  # the driver-kill test hook of the local run, the same way
                        signal.raise_signal(getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL")))
                    if len(chunk) == job.settings.checkpoint_every or n == len(work):
                        if features:  # before the checkpoint that commits the chunk, as the local run does
                            job.features.add(chunk, embeddings)
                        job.save_checkpoint(done)
                        chunk, embeddings = [], {}
            finally:
                bar.close()


class OnnxModel:
    """In each inference actor: one onnxruntime session on the model bytes (the object-store copy)."""

    def __init__(self, model: bytes, embedding: bool = False):
        from trapkit.serve.runtime import OnnxRuntime

        import ray

        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        # onnxruntime reads a file; it is deleted once the session holds the model.
        fd, path = tempfile.mkstemp(suffix=".onnx")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model)
            # One thread per actor: more cores get more actors (the cluster counts each as half a CPU).
            self.runtime = OnnxRuntime(path, threads=1)
        finally:
            os.unlink(path)
        self.embedding = embedding
        log.debug("inference actor: onnxruntime providers %s", self.runtime.providers)

    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        if not self.embedding:
            return {"probs": self.runtime.predict(crops)}  # (N, C) float32
        probs, embedding = self.runtime.predict(crops, embedding=True)  # (N, C), (N, D) from one run of the graph
        return {"probs": probs, "embedding": embedding}
