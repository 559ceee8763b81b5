"""PyTorch backend for checkpoints (.pt) and TorchScript (.ts), behind the edge interface.

Used for evaluation on the workstation and as the benchmark's eager baseline."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from edge.vision.backends.base import Backend, ModelInfo, file_sha256
from edge.errors import ModelError
from edge.vision.preprocess import PreprocessSpec
from train.checkpoint import model_from_checkpoint

TORCHSCRIPT_METADATA = "scrapsort.json"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: Path, device: str = "cpu"):
        path = Path(path)
        self.device = torch.device(device)
        if path.suffix == ".ts":
            self.model, meta = load_torchscript(path)
        else:
            self.model, ckpt = model_from_checkpoint(path)
            meta = {"classes": ckpt["classes"], "preprocess": ckpt["preprocess"], "backbone": ckpt["backbone"]}
        self.model = self.model.to(self.device).eval()
        self.info = ModelInfo(path=str(path), sha256=file_sha256(path), classes=tuple(meta["classes"]),
                              preprocess=PreprocessSpec.from_json(meta["preprocess"]), backbone=meta["backbone"])
        self.input = np.zeros(self.expected_input_shape(), np.float32)
        self._input = torch.from_numpy(self.input)  # shares memory with self.input
        self.output = np.zeros(len(self.info.classes), np.float32)

    @torch.inference_mode()
    def infer(self) -> np.ndarray:
        logits = self.model(self._input.to(self.device))
        self.output[:] = logits[0].float().cpu().numpy()
        return self.output


def load_torchscript(path: Path):
    files = {TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable TorchScript file ({exc})") from None
    if not files[TORCHSCRIPT_METADATA]:
        raise ModelError(f"{path}: TorchScript file has no scrapsort metadata; export it with `scrapsort export`")
    return model, json.loads(files[TORCHSCRIPT_METADATA])
