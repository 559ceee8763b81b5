"""Import TensorRT once, with the versions it may be (8.5/8.6, 10.x, 11.x)."""
from __future__ import annotations

from edge.deps import require


def import_tensorrt():
    return require("tensorrt", fix=(
        "TensorRT is not installed on this machine. Engines are built on the device that runs them (a Jetson with JetPack 5/6/7, which ships TensorRT, or "
        "an x86 box with TensorRT): there run `make engine PRECISION=fp16` or `scrapsort build`. Here, use the "
        "ONNX models with ONNX Runtime."))


def major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def has_strong_typing(trt) -> bool:
    """TensorRT 10 builds strongly typed networks when asked (the STRONGLY_TYPED flag), 11 always
    does (the flag is deprecated there and may go): decided by the version, not by the flag."""
    return major(trt) >= 10


def logger(trt):
    return trt.Logger(trt.Logger.WARNING)
