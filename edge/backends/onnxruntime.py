"""ONNX Runtime backend (CPU or CUDA) with IO binding onto preallocated numpy buffers."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edge.backends.base import Backend, ModelInfo
from edge.errors import MissingDependencyError, ModelError


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0):
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise MissingDependencyError("ONNX models need onnxruntime: pip install onnxruntime "
                                         "(or use a TensorRT engine on a Jetson)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        available = ort.get_available_providers()
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({exc}); re-export with `scrapsort export`") from None
        self.info = ModelInfo.from_metadata(path, self.session.get_modelmeta().custom_metadata_map)
        self.providers = self.session.get_providers()
        self._check_io(path)
        self.input = np.zeros(self.expected_input_shape(), np.float32)
        self.output = np.zeros((1, len(self.info.classes)), np.float32)
        self._binding = self.session.io_binding()
        self._binding.bind_input(self._input_name, "cpu", 0, np.float32, self.input.shape, self.input.ctypes.data)
        self._binding.bind_output(self._output_name, "cpu", 0, np.float32, self.output.shape, self.output.ctypes.data)

    def _check_io(self, path: Path) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        spec, out = inputs[0], outputs[0]
        expected = self.expected_input_shape()
        shape_ok = len(spec.shape) == 4 and all(not isinstance(d, int) or d == e for d, e in zip(spec.shape, expected))
        if spec.type != "tensor(float)" or not shape_ok:
            raise ModelError(f"{path}: input '{spec.name}' is {spec.type} {spec.shape}, but the metadata says "
                             f"float32 {list(expected)}; re-export the model")
        if out.shape[-1] not in (len(self.info.classes), None) and isinstance(out.shape[-1], int):
            raise ModelError(f"{path}: output has {out.shape[-1]} classes, metadata lists {len(self.info.classes)}")
        self._input_name, self._output_name = spec.name, out.name

    def infer(self) -> np.ndarray:
        self.session.run_with_iobinding(self._binding)
        return self.output[0]

    def close(self) -> None:
        self._binding = None
        self.session = None
