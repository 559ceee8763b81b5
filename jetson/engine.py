"""TensorRT backend: a matched engine, buffers allocated once, one stream, named tensors.

Metadata is checked before TensorRT is touched: an engine from another TensorRT version,
GPU or ONNX is refused with the rebuild command, never run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.vision.backends.base import Backend, ModelInfo, file_sha256
from edge.errors import ModelError
from edge.vision.preprocess import PreprocessSpec
from jetson import cuda
from jetson.metadata import EngineMetadata, Runtime, check_match
from jetson.trt import import_tensorrt, logger


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path):
        path = Path(path)
        meta = EngineMetadata.load(path)
        trt = import_tensorrt()
        onnx = Path(meta.onnx_path)
        check_match(meta, Runtime(trt.__version__, *cuda.gpu()), path, file_sha256(onnx) if onnx.is_file() else None)
        self.info = ModelInfo(path=str(path), sha256=file_sha256(path), classes=tuple(meta.classes),
                              preprocess=PreprocessSpec.from_json(meta.preprocess), precision=meta.precision,
                              backbone="tensorrt")
        self._runtime = trt.Runtime(logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelError(f"{path}: TensorRT could not deserialize the engine; rebuild: make engine "
                             f"PRECISION={meta.precision}")
        self.context = self.engine.create_execution_context()
        self._bind(trt, path)

    def _bind(self, trt, path: Path) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected one input and one output tensor, found {inputs} / {outputs}")
        for name in names:
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise ModelError(f"{path}: tensor {name} is {self.engine.get_tensor_dtype(name)}, expected FP32 I/O")
        shape = self.expected_input_shape()
        if -1 in tuple(self.engine.get_tensor_shape(inputs[0])):
            self.context.set_input_shape(inputs[0], shape)
        self._in = cuda.HostDeviceBuffer(shape)
        self._out = cuda.HostDeviceBuffer((1, len(self.info.classes)))
        # Every I/O tensor gets its address once; a missing one is TensorRT's "address is not set".
        self.context.set_tensor_address(inputs[0], int(self._in.device))
        self.context.set_tensor_address(outputs[0], int(self._out.device))
        self.stream = cuda.new_stream()
        self.input = self._in.host

    def infer(self) -> np.ndarray:
        self._in.to_device(self.stream)
        if not self.context.execute_async_v3(int(self.stream)):
            raise ModelError("TensorRT execution failed (see the TensorRT log)")
        self._out.to_host(self.stream)
        cuda.synchronize(self.stream)
        return self._out.host[0]

    def close(self) -> None:
        if getattr(self, "stream", None) is not None:
            cuda.synchronize(self.stream)
            self._in.free()
            self._out.free()
            cuda.destroy_stream(self.stream)
            self.stream = None
        self.context = self.engine = None
