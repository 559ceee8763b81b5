"""A stand-in for cuda-python's runtime module (`cuda.bindings.runtime`), with a sanitizer.

Host and "device" memory are real ctypes buffers, so copies move real bytes; every copy,
read and write is checked against the allocation it lands in (what compute-sanitizer does
on a GPU), and `outstanding()` lists what was never freed. Errors are a plain Enum, as in
cuda-bindings 13.2 (not an IntEnum: int(err) fails, err.value works), and streams warn on
int(), which cuda-bindings 13 deprecates.
"""
from __future__ import annotations

import ctypes
import enum
import warnings
from types import SimpleNamespace


class cudaError_t(enum.Enum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.Enum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStream_t:
    def __init__(self, handle: int):
        self._handle = handle

    def __index__(self):  # what TensorRT's size_t parameter reads
        return self._handle

    def __int__(self):
        warnings.warn("int(cudaStream_t) is deprecated; pass the object or use get_cuda_native_handle()",
                      DeprecationWarning, stacklevel=2)
        return self._handle


class SanitizerError(AssertionError):
    pass


class FakeCudart:
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStream_t = cudaStream_t
    OK = cudaError_t.cudaSuccess

    def __init__(self, gpu: str = "Orin", capability=(8, 7), fail=None):
        self.gpu, self.capability = gpu, capability
        self.fail = dict(fail or {})  # call name -> which call fails (1 = the first)
        self.counts = {}
        self.allocations = {}  # address -> (size, kind, buffer)
        self.streams = set()

    def _failing(self, name: str) -> bool:
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.fail.get(name) == self.counts[name]

    def _alloc(self, name: str, size: int, kind: str):
        if self._failing(name):
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        buffer = (ctypes.c_byte * size)()
        address = ctypes.addressof(buffer)
        self.allocations[address] = (size, kind, buffer)
        return (self.OK, address)

    def _span(self, address: int, size: int, kind: str) -> None:
        for base, (length, what, _) in self.allocations.items():
            if base <= address and address + size <= base + length:
                if what != kind:
                    raise SanitizerError(f"{kind} access to {what} memory at {address:#x}")
                return
        raise SanitizerError(f"{size} bytes at {address:#x} are outside every {kind} allocation")

    def _free(self, address: int, kind: str):
        size, what, _ = self.allocations.pop(address, (0, None, None))
        if what != kind:
            raise SanitizerError(f"free of {address:#x}, which is not a live {kind} allocation")
        return (self.OK,)

    # -- the cuda-python calls jetson/cuda.py makes ------------------------------------
    def cudaGetErrorName(self, err):
        return (self.OK, err.name.encode())

    def cudaGetDevice(self):
        return (self.OK, 0)

    def cudaGetDeviceProperties(self, device):
        return (self.OK, SimpleNamespace(name=self.gpu.encode() + b"\x00" * 8, major=self.capability[0],
                                         minor=self.capability[1]))

    def cudaMallocHost(self, size):
        return self._alloc("cudaMallocHost", size, "host")

    def cudaMalloc(self, size):
        return self._alloc("cudaMalloc", size, "device")

    def cudaFreeHost(self, address):
        return self._free(address, "host")

    def cudaFree(self, address):
        return self._free(address, "device")

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if stream not in self.streams:
            raise SanitizerError(f"copy on a stream that does not exist: {stream!r}")
        to_device = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
        self._span(dst, count, "device" if to_device else "host")
        self._span(src, count, "host" if to_device else "device")
        ctypes.memmove(dst, src, count)
        return (self.OK,)

    def cudaStreamCreate(self):
        if self._failing("cudaStreamCreate"):
            return (cudaError_t.cudaErrorMemoryAllocation, None)
        stream = cudaStream_t(0x5000 + len(self.streams) + 1)
        self.streams.add(stream)
        return (self.OK, stream)

    def cudaStreamSynchronize(self, stream):
        return (self.OK,)

    def cudaStreamDestroy(self, stream):
        self.streams.discard(stream)
        return (self.OK,)

    # -- what the stub engine does on the device -----------------------------------------
    def read(self, address: int, size: int) -> bytes:
        self._span(address, size, "device")
        return ctypes.string_at(address, size)

    def write(self, address: int, data: bytes) -> None:
        self._span(address, len(data), "device")
        ctypes.memmove(address, data, len(data))

    def outstanding(self):
        return sorted(kind for _, kind, _ in self.allocations.values()) + ["stream"] * len(self.streams)
