"""Triton Python-backend model written by `trapkit export --triton-backend python`.

Runs the `model.onnx` beside this file with onnxruntime. Triton's dynamic
batcher hands `execute` several requests at once: their `images` tensors
(n_i, S, S, 3) uint8 are concatenated into one batch, run once, and the
outputs split back per request in order. Imports only numpy, onnxruntime and
Triton's own utilities, so the backend stub's environment stays small.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, providers=providers)
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]

    def execute(self, requests):
        try:
            batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            results = self.session.run([name for name, _ in self.outputs],
                                       {self.input_name: np.concatenate(batches, axis=0)})
        except Exception as e:  # one failed batch answers every request in it with the error
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"trapkit model failed: {e}"))
                    for _ in requests]
        responses, start = [], 0
        for batch in batches:
            stop = start + len(batch)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[start:stop], dtype=dtype))
                       for (name, dtype), result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses

    def finalize(self):
        self.session = None
