"""`trapkit classify --ray`: stages 1-3 of the batch classifier on a Ray cluster (`trapkit.cluster`).

The driver (this process) keeps everything a local run keeps: the detections
document, which detections are classified, the checkpoint, the assembled
MegaDetector JSON, CSV and summary (all `trapkit.serve.classify`'s own code).
The cluster does the work: model actors take chunks of image paths and boxes,
open, decode and crop each image through the core's one preparation path, and
classify the crops with their own onnxruntime session (on a GPU each when the
cluster has them). The model file travels to the actors through Ray's object
store once, so only the images need to be on shared storage.

Images come back in any order; every `checkpoint_every` of them go to
`ClassifyJob.commit` (records, then with `--features` that chunk's
embeddings, then the checkpoint: the local run's format), so a killed driver
resumes with `--resume`, on the cluster or locally. The features table then
has the local run's rows, grouped by the chunks the cluster finished rather
than in image order.
"""

from __future__ import annotations

import logging
import os
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
        from trapkit.progress import progress

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
        features = job.features is not None  # --features: the graph's embedding comes back too
        with connect(self.cluster) as cluster:
            cluster.check_visible(root, [file for _, file, _ in work])
            model = cluster.ray.put(Path(model_path).read_bytes())
            results = cluster.map_prepared(work, job.prep, OnnxModel, (model, features), root=root,
                                           batch_size=job.settings.batch_size)
            chunk, probs, embeddings = [], {}, {}  # images since the last checkpoint, {(image, detection): (C,)}
            bar = progress(len(work), "classify (ray)", "image")
            try:
                for n, item in enumerate(results, 1):
                    staged = job.staged(item.key, Attempt(None, item.time, item.warnings, item.failure, item.message))
                    keys = [(item.key, j) for j in staged.det_indices]  # outputs are (k, ...) in this order
                    probs.update(zip(keys, item.outputs.get("probs", ())))
                    embeddings.update(zip(keys, item.outputs.get("embedding", ())))
                    chunk.append(staged)
                    if len(chunk) == job.settings.checkpoint_every or n == len(work):
                        job.commit(chunk, probs, done, embeddings)
                        bar.update(len(chunk))
                        chunk, probs, embeddings = [], {}, {}
            finally:
                bar.close()


class OnnxModel:
    """In each model actor: one onnxruntime session on the model bytes (the object-store copy)."""

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
            # One thread per actor: the actor decodes and classifies on its one CPU, more cores get more actors.
            self.runtime = OnnxRuntime(path, threads=1)
        finally:
            os.unlink(path)
        self.embedding = embedding
        log.debug("model actor: onnxruntime providers %s", self.runtime.providers)

    def __call__(self, crops) -> dict[str, np.ndarray]:
        """(N, S, S, 3) uint8 crops (an array, or a tensor in GPU memory: read there) -> the graph's outputs."""
        predict = self.runtime.predict if isinstance(crops, np.ndarray) else self.runtime.predict_device
        if not self.embedding:
            return {"probs": predict(crops)}  # (N, C) float32
        probs, embedding = predict(crops, embedding=True)  # (N, C), (N, D) from one run of the graph
        return {"probs": probs, "embedding": embedding}
