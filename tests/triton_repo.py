"""A Python-backend Triton model repository around a trapkit model.onnx, for the tests and the benchmark.

Layout: REPO/NAME/config.pbtxt, REPO/NAME/labels.txt, REPO/NAME/1/model.py,
REPO/NAME/1/model.onnx. `model.py` runs the same ONNX graph through
onnxruntime and concatenates every request Triton hands it into one batch.
The spec JSON rides as the config parameter `trapkit.spec`, which
`TritonRuntime` reads back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODEL_PY = '''\
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        threads = config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # Every request Triton hands over becomes one onnxruntime batch, split back per request.
        images = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        probs, embedding = self.session.run(["probs", "embedding"], {"images": np.concatenate(images)})
        responses, start = [], 0
        for batch in images:
            end = start + len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("probs", probs[start:end]),
                                                         pb_utils.Tensor("embedding", embedding[start:end])]))
            start = end
        return responses
'''


def pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_python_repo(onnx_path: Path, repo: Path, name: str, *, max_batch_size: int = 16,
                      dynamic_batching: bool = True, instances: int = 1, intra_op_threads: int = 0) -> Path:
    """Write REPO/NAME for the Python backend; returns the model folder."""
    from trapkit.export.onnx_export import read_spec

    spec = read_spec(onnx_path)
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
    (folder / "1" / "model.py").write_text(MODEL_PY)
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in spec.labels))
    s = spec.input_size
    dims = f"{spec.feat_dim}" if spec.feat_dim else "-1"
    batching = "dynamic_batching { max_queue_delay_microseconds: 2000 }\n" if dynamic_batching else ""
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "images" data_type: TYPE_UINT8 dims: [ {s}, {s}, 3 ] }} ]\n'
        f'output [ {{ name: "probs" data_type: TYPE_FP32 dims: [ {spec.num_classes} ] label_filename: "labels.txt" }},\n'
        f'         {{ name: "embedding" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n{batching}"
        f'parameters {{ key: "trapkit.spec" value: {{ string_value: {pbtxt_string(json.dumps(spec.to_dict()))} }} }}\n'
        f'parameters {{ key: "intra_op_threads" value: {{ string_value: "{intra_op_threads}" }} }}\n'
    )
    return folder
