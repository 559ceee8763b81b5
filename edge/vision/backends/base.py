"""The one interface every inference backend implements (ONNX Runtime, TensorRT, PyTorch).

Batch 1, preallocated: callers preprocess straight into `backend.input` and call
`infer()`, which returns the logits in a buffer owned by the backend. Nothing is
allocated per frame.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from edge.errors import ModelError
from edge.vision.preprocess import METADATA_KEY, PreprocessSpec

CLASSES_KEY = "scrapsort.classes"
PRECISION_KEY = "scrapsort.precision"
BACKBONE_KEY = "scrapsort.backbone"
VERSION_KEY = "scrapsort.version"  # the training run and when it was exported
INT32_BIASES_KEY = "scrapsort.int32_biases"  # "true": the INT8 file carries its biases as int32


@dataclass(frozen=True)
class ModelInfo:
    path: str
    sha256: str
    classes: Tuple[str, ...]
    preprocess: PreprocessSpec
    precision: str = "fp32"
    backbone: str = "unknown"
    version: str = ""

    @property
    def version_name(self) -> str:
        """The version `scrapsort export` wrote, else the file's name."""
        return self.version or Path(self.path).name

    @property
    def label(self) -> str:
        """How logs, audit rows and metrics name the model: version and short sha256."""
        return f"{self.version_name}@{self.sha256[:12]}"

    @classmethod
    def from_metadata(cls, path: Path, metadata: Dict[str, str]) -> "ModelInfo":
        missing = [k for k in (CLASSES_KEY, METADATA_KEY) if k not in metadata]
        if missing:
            raise ModelError(f"{path}: model has no scrapsort metadata ({', '.join(missing)}); "
                             f"export it with `scrapsort export` so classes and preprocessing travel with it")
        return cls(path=str(path), sha256=file_sha256(path), classes=tuple(json.loads(metadata[CLASSES_KEY])),
                   preprocess=PreprocessSpec.from_json(metadata[METADATA_KEY]),
                   precision=metadata.get(PRECISION_KEY, "fp32"), backbone=metadata.get(BACKBONE_KEY, "unknown"),
                   version=metadata.get(VERSION_KEY, ""))

    def to_metadata(self) -> Dict[str, str]:
        return {CLASSES_KEY: json.dumps(list(self.classes)), METADATA_KEY: self.preprocess.to_json(),
                PRECISION_KEY: self.precision, BACKBONE_KEY: self.backbone,
                **({VERSION_KEY: self.version} if self.version else {})}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Backend(ABC):
    name = "backend"
    info: ModelInfo
    input: np.ndarray  # (1, 3, H, W) float32, written by the caller
    unfused_int8 = False  # True where INT8 Q/DQ runs as exact but slow unfused arithmetic

    @property
    def runs_on(self) -> str:
        """What executes the model (an ONNX Runtime provider, the GPU or a DLA core)."""
        return self.name

    def expected_input_shape(self) -> Tuple[int, int, int, int]:
        size = self.info.preprocess.input_size
        return (1, 3, size, size)

    @abstractmethod
    def infer(self) -> np.ndarray:
        """Run on `self.input`; return logits (num_classes,) in a backend-owned buffer."""

    def close(self) -> None:
        """Release sessions/engines/device memory."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
