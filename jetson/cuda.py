"""The smallest CUDA layer the TensorRT backend needs, on NVIDIA's cuda-python.

cuda-python rather than pycuda: it is NVIDIA's maintained binding (TensorRT's own samples
use it), ships prebuilt wheels for Jetson (pycuda compiles against the local CUDA), and
returns explicit error codes that are checked on every call here. Errors are read with
`.value` and streams are passed as objects: cuda-bindings 13 deprecates int() on its
handles and its enums are no longer IntEnum, while the 11.x of JetPack 5 takes both.
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
    if err.value != 0:
        raise ModelError(f"CUDA error {cudart.cudaGetErrorName(err)[1].decode()}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu() -> Tuple[str, str]:
    """(name, compute capability 'X.Y') of the current device."""
    require()
    device = check(cudart.cudaGetDevice())
    props = check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


class HostDeviceBuffer:
    """A page-locked host array and its device twin, allocated once; a context manager that
    frees both (and frees the host half if the device half cannot be had)."""

    def __init__(self, shape, dtype=np.float32):
        require()
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self._host_ptr = check(cudart.cudaMallocHost(self.nbytes))
        try:
            self.device = check(cudart.cudaMalloc(self.nbytes))
        except ModelError:
            check(cudart.cudaFreeHost(self._host_ptr))
            raise
        raw = (ctypes.c_byte * self.nbytes).from_address(self._host_ptr)
        self.host = np.frombuffer(raw, dtype=dtype).reshape(shape)

    def __enter__(self) -> "HostDeviceBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def to_device(self, stream: "Stream") -> None:
        check(cudart.cudaMemcpyAsync(self.device, self._host_ptr, self.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle))

    def to_host(self, stream: "Stream") -> None:
        check(cudart.cudaMemcpyAsync(self._host_ptr, self.device, self.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle))

    def free(self) -> None:
        if self.device is not None:
            self.host = None  # the array must not outlive the pinned memory under it
            device, self.device = self.device, None
            check(cudart.cudaFree(device))
            check(cudart.cudaFreeHost(self._host_ptr))


class Stream:
    """One CUDA stream; leaving the context synchronises and destroys it."""

    def __init__(self):
        require()
        self.handle = check(cudart.cudaStreamCreate())

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self.handle))

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            try:
                self.synchronize()
            finally:
                check(cudart.cudaStreamDestroy(self.handle))
                self.handle = None
