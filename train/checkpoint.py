"""Checkpoints that carry everything needed to rebuild and use the model:
weights, config, class list and preprocessing, plus optimiser state for resuming."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from edge.config import config_from_dict
from edge.errors import ModelError
from edge.vision.preprocess import PreprocessSpec
from train.models import build_model

BEST, LAST = "best.pt", "last.pt"


def save_checkpoint(state: Dict[str, Any], path: Path) -> None:
    """Write to a temp file and rename, so a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    if not Path(path).is_file():
        raise ModelError(f"{path}: checkpoint not found; run `scrapsort train` first")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"{path}: not a readable checkpoint ({exc}); retrain or restore it") from None


def model_from_checkpoint(path: Path) -> Tuple[nn.Module, Dict[str, Any]]:
    """(eval-mode model, checkpoint dict) from a checkpoint written by `scrapsort train`."""
    ckpt = load_checkpoint(path)
    # Only the model section is needed to rebuild it; the rest of the embedded config may be
    # from an older release whose other sections have since changed.
    config = config_from_dict({"model": ckpt["config"]["model"]}, f"{path} (embedded model config)")
    model = build_model(config.model, len(ckpt["classes"]), load_weights=False)
    model.load_state_dict(ckpt["model"])
    ckpt["preprocess_spec"] = PreprocessSpec.from_json(ckpt["preprocess"])
    ckpt["config_obj"] = config
    return model.eval(), ckpt
