"""`trapkit classify` on an NVIDIA GPU: JPEGs decoded, cropped and resized there, classified from device memory.

On a GPU, the CPU path's bound is decoding: one GPU classifies 8,000-10,000
Lite0 crops a second, far more than a node's cores decode (docs/scale-out.md).
`GpuExecutor` keeps the pixels on the device: a thread prepares the next batch
of images (`trapkit.gpu.DevicePreparer`: headers and bytes read on the CPU,
JPEGs decoded and crops cut on the GPU) while this thread runs onnxruntime on
the crops already made, reading them in device memory
(`OnnxRuntime.predict_device`, I/O binding; CUDA or TensorRT, whichever the
runtime started). Finished images go to `ClassifyJob.commit` every
`checkpoint_every` images, as in a local run: the checkpoint is the same, so
a GPU run resumes on the CPU path and the other way round. Batches never
straddle a checkpoint, so a resumed run feeds the model the same batches.

`executor_for(runtime, want)` picks it: only with a GPU, PyTorch with CUDA, a
device JPEG decoder and an onnxruntime session on the GPU; otherwise the CPU
path, with one line saying why where a GPU is present.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trapkit.errors import TrapkitError
from trapkit.gpu import DevicePreparer, choose_decoder

log = logging.getLogger(__name__)

DECODE_BATCH = 32  # images decoded on the device at once
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def executor_for(runtime, want: str = "auto"):
    """A `GpuExecutor` when `want` ("auto", "gpu", "cpu") allows it and this machine can; None for the CPU path,
    with one line saying why (a warning where a GPU is here; `want="gpu"` without one is an error)."""
    choice = choose_decoder(want)
    reason = choice.reason
    if choice.decoder is not None:
        providers = getattr(runtime, "providers", None)
        if providers is None:
            reason = "the model runs on a Triton server"
        elif not set(providers) & set(_GPU_PROVIDERS):
            reason = ("onnxruntime runs on the CPU here (it needs onnxruntime-gpu, and CUDA's libraries where it finds "
                      "them: docs/scale-out.md)")
        else:
            log.info("classify on the GPU: %s, onnxruntime on %s", reason, providers[0])
            return GpuExecutor(choice.decoder)
    if want == "gpu":
        raise TrapkitError(f"--decode gpu cannot run here: {reason}; leave out --decode gpu to decode on the CPU")
    (log.warning if choice.gpu_here else log.debug)("decoding on the CPU: %s", reason)
    return None


class GpuExecutor:
    """`classify_images(..., executor=GpuExecutor(decoder))`: the job's photos prepared and classified on the GPU
    (`device` is a torch device; "cpu" runs the same code on host tensors, as the tests do)."""

    def __init__(self, decoder: str, device: str = "cuda", decode_batch: int = DECODE_BATCH):
        self.decoder, self.device, self.decode_batch = decoder, device, decode_batch

    def __call__(self, job, todo: list[int], done: dict) -> None:
        import torch
        from trapkit.progress import progress

        videos = [i for i in todo if i in job.frames or i in job.videos]
        if videos:  # one decoder pass per video: the local stages
            job.run(videos, done)
        photos = [i for i in todo if i not in job.frames and i not in job.videos]
        if not photos:
            return
        every, root = job.settings.checkpoint_every, Path(job.paths.images_dir)
        # Decoding groups that never straddle a checkpoint: (chunk number, image indices).
        groups = [(start, photos[s:min(s + self.decode_batch, start + every)]) for start in range(0, len(photos), every)
                  for s in range(start, min(start + every, len(photos)), self.decode_batch)]
        preparer = DevicePreparer(job.prep, self.device, self.decoder)
        stream = torch.cuda.Stream() if preparer.device.type == "cuda" else None

        def prepare(group: list[int]):  # on its own CUDA stream, finished when it returns
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                return preparer.prepare([(root, *job.work(i)) for i in group])

        bar = progress(len(photos), "classify (gpu)", "image")
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="gpu-prepare") as ahead:
                pending = ahead.submit(prepare, groups[0][1])
                batcher = _DeviceBatcher(job.runtime, job.settings.batch_size, job.features is not None)
                chunk = []
                for n, (start, group) in enumerate(groups):
                    attempts = pending.result()
                    if n + 1 < len(groups):
                        pending = ahead.submit(prepare, groups[n + 1][1])  # decodes while this group infers
                    for i, attempt in zip(group, attempts):
                        staged = job.staged(i, attempt)
                        if staged.crops is not None:
                            batcher.add(i, staged.det_indices, staged.crops)
                            staged.crops = None  # the batcher holds them until they are classified
                        chunk.append(staged)
                    if n + 1 == len(groups) or groups[n + 1][0] != start:  # the chunk's last group
                        probs, embeddings = batcher.finish()
                        job.commit(chunk, probs, done, embeddings)
                        bar.update(len(chunk))
                        chunk = []
        finally:
            bar.close()
            preparer.close()


class _DeviceBatcher:
    """Crops in device memory gathered into batches of `batch_size` and classified as each fills."""

    def __init__(self, runtime, batch_size: int, embedding: bool):
        self.runtime, self.batch_size, self.embedding = runtime, batch_size, embedding
        self.keys: list[tuple[int, int]] = []
        self.crops: list = []  # (k, S, S, 3) uint8 tensors
        self.probs: dict = {}
        self.embeddings: dict = {}

    def add(self, index: int, det_indices: list[int], crops) -> None:
        self.keys += [(index, j) for j in det_indices]
        self.crops.append(crops)
        while len(self.keys) >= self.batch_size:
            self._run(self.batch_size)

    def _run(self, n: int) -> None:
        import torch

        crops = torch.cat(self.crops)
        if crops.is_cuda:  # the copy done before onnxruntime reads it, and before the parts are let go
            torch.cuda.current_stream().synchronize()
        batch, rest = crops[:n], crops[n:]
        keys, self.keys = self.keys[:n], self.keys[n:]
        self.crops = [rest] if len(rest) else []
        out = self.runtime.predict_device(batch, embedding=self.embedding)
        probs, embedding = out if self.embedding else (out, None)  # (n, C), (n, D)
        self.probs.update(zip(keys, probs))
        if embedding is not None:
            self.embeddings.update(zip(keys, embedding))

    def finish(self) -> tuple[dict, dict]:
        """Classify what is left (a short batch at a checkpoint) and hand back every result since the last call."""
        if self.keys:
            self._run(len(self.keys))
        out = (self.probs, self.embeddings)
        self.probs, self.embeddings = {}, {}
        return out
