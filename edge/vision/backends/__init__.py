"""One door for every model file: the backend follows from the file type (or is forced)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from edge.vision.backends.base import Backend, ModelInfo
from edge.deps import require
from edge.errors import ModelError

SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".pt": "torch", ".ts": "torch"}


def open_backend(path, kind: Optional[str] = None, flip_average: bool = False, **options) -> Backend:
    """The backend for `path` (by suffix, or `kind`); with flip_average, wrapped to average each
    input's answer with its mirror image's (edge.vision.backends.flip)."""
    backend = _open(Path(path), kind, **options)
    if flip_average:
        from edge.vision.backends.flip import FlipAveraged

        return FlipAveraged(backend)
    return backend


def _open(path: Path, kind: Optional[str], **options) -> Backend:
    if not path.is_file():
        raise ModelError(f"{path}: model file not found (train and export one, or fix the path)")
    kind = kind or SUFFIXES.get(path.suffix.lower())
    if kind == "onnxruntime":
        from edge.vision.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **options)
    if kind == "tensorrt":
        from jetson.engine import TensorRTBackend

        return TensorRTBackend(path, **options)
    if kind == "torch":
        return require("train.torch_backend", "train").TorchBackend(path)
    raise ModelError(f"{path}: unknown model type '{path.suffix}' (use .onnx, .engine/.plan, .pt or .ts)")


def open_side_instance(path, flip_average: bool = False) -> Backend:
    """A second instance of a model beside the line's (the operator page, a canary, a shadow
    model): one inference thread where the runtime has the setting, so it leaves the cores to
    the sorting loop's instance; flip-averaged where the line is, so its answers compare."""
    path = Path(path)
    return open_backend(path, flip_average=flip_average, **({"threads": 1} if path.suffix == ".onnx" else {}))


__all__ = ["Backend", "ModelInfo", "open_backend", "open_side_instance"]
