"""The one preprocessing implementation: training's eval path, export checks, calibration
and the edge loop all call it, so what the model sees never drifts between them.

A frame (BGR uint8 HxWx3, as OpenCV delivers it) is resized to the square model input,
converted to the model's channel order and normalised into a caller-owned float32 CHW
buffer, so the edge loop allocates nothing per frame.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

# Pixel-unit (0..255) mean/std. TF-trained Lite models expect (x - 127) / 128; torchvision's
# ImageNet models expect the ImageNet statistics. Which one a pretrained EfficientNet-Lite0
# wants was measured (docs/training.md, "Preprocessing").
NORMALISATIONS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "tf_lite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}
BACKBONE_NORMALISATION = {"efficientnet_lite0": "tf_lite", "efficientnet_lite1": "tf_lite",
                          "efficientnet_lite2": "tf_lite", "resnet18": "imagenet"}
METADATA_KEY = "scrapsort.preprocess"


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    channel_order: str = "RGB"
    resize: str = "stretch"  # whole frame squashed to the square input: no item is cropped away

    @classmethod
    def for_backbone(cls, backbone: str, input_size: int, normalisation: str = "auto") -> "PreprocessSpec":
        name = BACKBONE_NORMALISATION[backbone] if normalisation == "auto" else normalisation
        mean, std = NORMALISATIONS[name]
        return cls(input_size=input_size, mean=mean, std=std)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        data = json.loads(text)
        return cls(input_size=int(data["input_size"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                   channel_order=data.get("channel_order", "RGB"), resize=data.get("resize", "stretch"))


class Preprocessor:
    """Frame -> normalised model input, written in place into a preallocated buffer."""

    def __init__(self, spec: PreprocessSpec):
        if spec.channel_order not in ("RGB", "BGR") or spec.resize != "stretch":
            raise ValueError(f"unsupported preprocessing {spec}")
        self.spec = spec
        size = spec.input_size
        self._resized = np.empty((size, size, 3), np.uint8)
        self._ordered = np.empty((size, size, 3), np.uint8)
        self._scale = (1.0 / np.asarray(spec.std, np.float32)).reshape(3, 1, 1)
        self._offset = (-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).reshape(3, 1, 1)

    def new_input(self, batch: int = 1) -> np.ndarray:
        return np.empty((batch, 3, self.spec.input_size, self.spec.input_size), np.float32)

    def resize(self, bgr: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Resize a BGR frame and put it in the model's channel order (uint8 HxWx3)."""
        size = self.spec.input_size
        resized = cv2.resize(bgr, (size, size), dst=self._resized, interpolation=cv2.INTER_AREA)
        if out is None:
            out = np.empty_like(self._ordered)
        if self.spec.channel_order == "RGB":
            return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=out)
        np.copyto(out, resized)
        return out

    def normalise_into(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 (already in model order and size) -> float32 3xHxW in `out`."""
        np.copyto(out, image.transpose(2, 0, 1), casting="unsafe")
        out *= self._scale
        out += self._offset
        return out

    def __call__(self, bgr: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Full preprocessing of one frame into out (3xHxW or 1x3xHxW float32)."""
        target = out[0] if out.ndim == 4 else out
        return self.normalise_into(self.resize(bgr, out=self._ordered), target)
