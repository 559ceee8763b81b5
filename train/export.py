"""`scrapsort export`: best checkpoint -> ONNX (+ TorchScript), checked before anyone deploys it.

The ONNX file carries its class list and preprocessing as metadata, so the edge runtime
needs nothing else. Parity: ONNX Runtime and PyTorch must agree on real images.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import onnx
import torch

from edge.vision.backends import open_backend
from edge.vision.backends.base import ModelInfo
from edge.config import Config
from edge.errors import ModelError
from edge.vision.images import read_image
from edge.vision.preprocess import Preprocessor
from train.checkpoint import BEST, model_from_checkpoint
from train.onnx_meta import add_metadata
from edge.vision.dataset import MANIFEST_NAME, Manifest
from train.torch_backend import TORCHSCRIPT_METADATA

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export(config: Config, checkpoint: Optional[str] = None, dynamic_batch: Optional[bool] = None) -> Dict:
    run_dir = config.run_path
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / BEST
    model, ckpt = model_from_checkpoint(ckpt_path)
    spec = ckpt["preprocess_spec"]
    info = ModelInfo(path="", sha256="", classes=tuple(ckpt["classes"]), preprocess=spec, backbone=ckpt["backbone"],
                     version=f"{run_dir.name}-e{ckpt['epoch']}-{time.strftime('%Y%m%dT%H%M')}")
    dynamic = config.export.dynamic_batch if dynamic_batch is None else dynamic_batch
    dummy = torch.zeros(1, 3, spec.input_size, spec.input_size)

    onnx_path = run_dir / "model.onnx"
    export_onnx(model, dummy, onnx_path, config.export.opset, dynamic, info.to_metadata())
    images = _parity_images(run_dir, config.export.parity_images)
    diff = onnx_parity(model, onnx_path, images)
    if diff > config.export.parity_tolerance:
        raise ModelError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.2e} "
                         f"(> {config.export.parity_tolerance:.0e}); the export is not trustworthy")

    ts_path = run_dir / "model.ts"
    meta = {"classes": list(info.classes), "preprocess": spec.to_json(), "backbone": info.backbone}
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, kept as the seed's fallback
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, dummy, check_trace=False)
        torch.jit.save(traced, str(ts_path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    result = {"onnx": str(onnx_path), "torchscript": str(ts_path), "opset": config.export.opset,
              "dynamic_batch": dynamic, "max_abs_diff": diff, "parity_images": len(images),
              "checkpoint": str(ckpt_path)}
    (run_dir / "export.json").write_text(json.dumps(result, indent=1))
    return result


def export_onnx(model: torch.nn.Module, dummy: torch.Tensor, path: Path, opset: int, dynamic: bool,
                metadata: Dict[str, str]) -> None:
    # The TorchScript-based exporter gives plain opset-17 graphs that TensorRT 8.5 (JetPack 5)
    # through 11 all parse; the dynamo exporter targets newer opsets.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None)
    proto = onnx.load(str(path))
    add_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def onnx_parity(model: torch.nn.Module, onnx_path: Path, images) -> float:
    """Max |ONNX Runtime - PyTorch| over the logits of real preprocessed images."""
    worst = 0.0
    with open_backend(onnx_path) as backend, torch.inference_mode():
        pre = Preprocessor(backend.info.preprocess)
        for bgr in images:
            pre(bgr, backend.input)
            reference = model(torch.from_numpy(backend.input.copy())).numpy()[0]
            worst = max(worst, float(np.abs(backend.infer() - reference).max()))
    return worst


def _parity_images(run_dir: Path, count: int):
    """Real test-split images when a manifest exists, else deterministic noise."""
    manifest_path = run_dir / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = Manifest.load(manifest_path)
        items = (manifest.split("test") or manifest.items)[:count]
        return [read_image(manifest.absolute(item)) for item in items]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (384, 512, 3), dtype=np.uint8) for _ in range(count)]
