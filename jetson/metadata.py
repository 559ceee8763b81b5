"""Engine metadata sidecar: what an engine was built with, and refusal of a mismatch.

TensorRT engines do not move between TensorRT versions, GPUs or Jetson modules. Every engine gets
`<engine>.json`; loading compares it with the running TensorRT and GPU (and the ONNX the
engine came from) and refuses with the rebuild command instead of failing later.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from edge.errors import ModelError


@dataclass(frozen=True)
class Runtime:
    tensorrt: str
    gpu: str
    compute_capability: str  # "8.7"
    module: str = ""         # Jetson module/SoC ('p3767-0005/tegra234'); '' off a Jetson


def this_runtime(trt) -> Runtime:
    from jetson import board, cuda

    return Runtime(trt.__version__, *cuda.gpu(), board.module_id())


@dataclass(frozen=True)
class EngineMetadata:
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    onnx_path: str
    onnx_sha256: str
    input_shape: List[int]
    output_shape: List[int]
    classes: List[str]
    preprocess: str           # PreprocessSpec JSON, as in the ONNX metadata
    built_at: str
    strongly_typed: bool
    dla_core: int = -1
    module: str = ""

    def save(self, engine: Path) -> None:
        sidecar_path(engine).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, engine: Path) -> "EngineMetadata":
        path = sidecar_path(engine)
        if not path.is_file():
            raise ModelError(f"{engine}: no metadata sidecar ({path.name}); it was not built by `scrapsort build`. "
                             f"Rebuild it: make engine PRECISION=<fp16|int8>")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{path}: unreadable engine metadata ({exc}); rebuild: make engine") from None


def sidecar_path(engine: Path) -> Path:
    return Path(str(engine) + ".json")


def check_match(meta: EngineMetadata, runtime: Runtime, engine: Path, onnx_sha256: Optional[str] = None) -> None:
    """Raise ModelError naming what differs and how to rebuild; return quietly when all match."""
    rebuild = f"rebuild it on this device: make engine PRECISION={meta.precision} (or scrapsort build)"
    if _version_key(meta.tensorrt) != _version_key(runtime.tensorrt):
        raise ModelError(f"{engine}: built with TensorRT {meta.tensorrt} on {meta.gpu}, this is TensorRT "
                         f"{runtime.tensorrt} on {runtime.gpu}: engines do not move between versions; {rebuild}")
    if meta.compute_capability != runtime.compute_capability or meta.gpu != runtime.gpu:
        raise ModelError(f"{engine}: built for {meta.gpu} (sm {meta.compute_capability}), this GPU is "
                         f"{runtime.gpu} (sm {runtime.compute_capability}); {rebuild}")
    if meta.module != runtime.module:
        raise ModelError(f"{engine}: built on module {meta.module or 'unrecorded'}, this is "
                         f"{runtime.module or 'not a Jetson'}: every Orin reports the GPU 'Orin', but engines do "
                         f"not move between modules; {rebuild}")
    if onnx_sha256 is not None and onnx_sha256 != meta.onnx_sha256:
        raise ModelError(f"{engine}: stale, built from a different ONNX than {meta.onnx_path} "
                         f"(sha256 {meta.onnx_sha256[:12]} vs {onnx_sha256[:12]}); {rebuild}")


def _version_key(version: str):
    """Engines are tied to major.minor.patch; the build number does not matter."""
    return tuple(version.split(".")[:3])
