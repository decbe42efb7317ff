"""trapkit.export: one parity-checked ONNX graph per model, and the copies serving layers consume.

onnx_export (the graph, its metadata, parity with PyTorch), quantize (fp16 / int8
variants with top-1 agreement), calibration (images for both), triton (model
repository writer), hub_folder (Hugging Face Hub folder and model card),
pipeline (`trapkit export` as one call), cli (the command).
"""
