"""The smallest CUDA layer the TensorRT backend needs, on NVIDIA's cuda-python.

cuda-python rather than pycuda: it is NVIDIA's maintained binding (TensorRT's own samples
use it), ships prebuilt wheels for Jetson (pycuda compiles against the local CUDA), and
returns explicit error codes that are checked on every call here.
"""
from __future__ import annotations

import ctypes
from typing import Tuple

import numpy as np

from edge.errors import MissingDependencyError, ModelError

try:  # cuda-python >= 12.6 moved the runtime module; JetPack 5 images carry the old path
    from cuda.bindings import runtime as cudart
except ImportError:  # pragma: no cover - depends on the installed binding
    try:
        from cuda import cudart
    except ImportError:
        cudart = None


def require() -> None:
    if cudart is None:
        raise MissingDependencyError("TensorRT engines need NVIDIA's CUDA binding: pip install cuda-python "
                                     "(matching the CUDA of your JetPack)")


def check(result):
    """cuda-python returns (error, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = cudart.cudaGetErrorName(err)[1].decode() if cudart else str(err)
        raise ModelError(f"CUDA error {name}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu() -> Tuple[str, str]:
    """(name, compute capability 'X.Y') of the current device."""
    require()
    device = check(cudart.cudaGetDevice())
    props = check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


class HostDeviceBuffer:
    """A page-locked host array and its device twin, allocated once."""

    def __init__(self, shape, dtype=np.float32):
        require()
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self._host_ptr = check(cudart.cudaMallocHost(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self._host_ptr))
        self.host = np.frombuffer(raw, dtype=dtype).reshape(shape)
        self.device = check(cudart.cudaMalloc(self.nbytes))

    def to_device(self, stream) -> None:
        check(cudart.cudaMemcpyAsync(self.device, self._host_ptr, self.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def to_host(self, stream) -> None:
        check(cudart.cudaMemcpyAsync(self._host_ptr, self.device, self.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def free(self) -> None:
        if self.device is not None:
            check(cudart.cudaFree(self.device))
            check(cudart.cudaFreeHost(self._host_ptr))
            self.device = None


def new_stream():
    require()
    return check(cudart.cudaStreamCreate())


def synchronize(stream) -> None:
    check(cudart.cudaStreamSynchronize(stream))


def destroy_stream(stream) -> None:
    check(cudart.cudaStreamDestroy(stream))
