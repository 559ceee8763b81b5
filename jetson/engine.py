"""TensorRT backend: a matched engine, buffers allocated once, one stream, named tensors.

Metadata is checked before TensorRT is touched: an engine from another TensorRT version,
GPU, module or ONNX is refused with the rebuild command, never run. Buffers are sized from
the engine's own tensors and compared with the metadata, and every CUDA allocation is freed
on every path (a failed load leaks nothing).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edge.vision.backends.base import Backend, ModelInfo, file_sha256
from edge.errors import ModelError
from edge.vision.preprocess import PreprocessSpec
from jetson import cuda
from jetson.metadata import EngineMetadata, check_match, this_runtime
from jetson.trt import import_tensorrt, logger


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path):
        path = Path(path)
        meta = EngineMetadata.load(path)
        trt = import_tensorrt()
        onnx = Path(meta.onnx_path)
        check_match(meta, this_runtime(trt), path, file_sha256(onnx) if onnx.is_file() else None)
        self.info = ModelInfo(path=str(path), sha256=file_sha256(path), classes=tuple(meta.classes),
                              preprocess=PreprocessSpec.from_json(meta.preprocess), precision=meta.precision,
                              backbone="tensorrt")
        self._rebuild = f"rebuild it: make engine PRECISION={meta.precision}"
        self._runtime = trt.Runtime(logger(trt))
        self._use_dla_core(meta, path)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelError(f"{path}: TensorRT could not deserialize the engine; {self._rebuild}")
        self.context = self.engine.create_execution_context()
        with contextlib.ExitStack() as undo:  # frees what was allocated if binding fails
            self._bind(trt, path, undo)
            self._resources = undo.pop_all()

    @property
    def runs_on(self) -> str:
        core = self._runtime.DLA_core if self._dla else -1
        return f"TensorRT on DLA core {core}" if core >= 0 else "TensorRT on the GPU"

    def _use_dla_core(self, meta: EngineMetadata, path: Path) -> None:
        """A DLA engine runs on the core it was built for (TensorRT would pick core 0)."""
        self._dla = meta.dla_core >= 0
        if not self._dla:
            return
        if self._runtime.num_DLA_cores <= meta.dla_core:
            raise ModelError(f"{path}: built for DLA core {meta.dla_core}, this device has "
                             f"{self._runtime.num_DLA_cores} DLA core(s); set engine.dla_core and {self._rebuild}")
        self._runtime.DLA_core = meta.dla_core

    def _bind(self, trt, path: Path, undo: contextlib.ExitStack) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected one input and one output tensor, found {inputs} / {outputs}")
        for name in names:
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise ModelError(f"{path}: tensor {name} is {self.engine.get_tensor_dtype(name)}, expected FP32 I/O; "
                                 f"{self._rebuild}")
        in_shape, out_shape = self._shapes(path, inputs[0], outputs[0])
        self._in = undo.enter_context(cuda.HostDeviceBuffer(in_shape))
        self._out = undo.enter_context(cuda.HostDeviceBuffer(out_shape))
        self.stream = undo.enter_context(cuda.Stream())
        # Every I/O tensor gets its address once; a missing one is TensorRT's "address is not set".
        self.context.set_tensor_address(inputs[0], self._in.device)
        self.context.set_tensor_address(outputs[0], self._out.device)
        self.input = self._in.host

    def _shapes(self, path: Path, input_name: str, output_name: str):
        """Input and output shapes as the engine has them at batch 1, checked against the metadata."""
        expected = tuple(self.expected_input_shape())
        engine_shape = tuple(self.engine.get_tensor_shape(input_name))
        if -1 in engine_shape and not self.context.set_input_shape(input_name, expected):
            raise ModelError(f"{path}: the engine rejects input shape {expected} (its profile does not allow "
                             f"batch 1 at this size); {self._rebuild}")
        in_shape = tuple(self.context.get_tensor_shape(input_name))
        out_shape = tuple(self.context.get_tensor_shape(output_name))
        if in_shape != expected:
            raise ModelError(f"{path}: engine input {input_name} is {in_shape}, the metadata says {expected}; "
                             f"{self._rebuild}")
        if len(out_shape) != 2 or out_shape[0] != 1 or out_shape[1] != len(self.info.classes):
            raise ModelError(f"{path}: engine output {output_name} {out_shape} has {out_shape[-1]} classes, the "
                             f"metadata lists {len(self.info.classes)}; {self._rebuild}")
        return in_shape, out_shape

    def infer(self) -> np.ndarray:
        self._in.to_device(self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise ModelError("TensorRT execution failed (see the TensorRT log)")
        self._out.to_host(self.stream)
        self.stream.synchronize()
        return self._out.host[0]

    def close(self) -> None:
        resources, self._resources = getattr(self, "_resources", None), None
        if resources is not None:
            resources.close()  # stream synchronised and destroyed, then the buffers freed
        self.context = self.engine = self.input = None
