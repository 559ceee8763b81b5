"""Quantization-aware fine-tuning: INT8 that keeps the FP32 model's answers on new images.

The trained model is fine-tuned with INT8 rounding simulated where the Q/DQ model rounds:
each convolution's and the classifier's weights per output channel (symmetric, as
calibration.qdq writes them; BatchNorm folding scales a channel, so the grid is the same
after folding) and their input activations per tensor (symmetric, ranges from the calibration
images). Gradients pass the rounding straight through. It learns from the FP32 model's own
answers (KL divergence, no labels), since agreeing with FP32 is the bound, on the calibration
images and the selection images set aside for it (augmented); the other selection images, which
judge every variant, stay unseen.

The result is plain FP32 weights that quantize well: exported to ONNX, they go through the
same calibration and Q/DQ writing as any model (calibration/calibrate.py), so TensorRT 8.5 to
11 build it like any other.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from edge.config import Config
from edge.errors import ModelError
from edge.vision.dataset import Manifest
from train.checkpoint import model_from_checkpoint
from train.data import Augment, ManifestDataset, make_loader
from train.export import export_onnx
from edge.vision.preprocess import Preprocessor

log = logging.getLogger(__name__)
QUANTIZED = (nn.Conv2d, nn.Linear)


class ChannelFakeQuant(nn.Module):
    """Weight parametrization: symmetric INT8 per output channel, scale from the channel's max."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))).clamp_min(1e-12) / 127
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


class InputFakeQuant:
    """Forward pre-hook: the layer's input rounded to symmetric INT8 within +-amax."""

    def __init__(self, amax: float):
        self.scale = max(amax, 1e-12) / 127

    def __call__(self, module: nn.Module, args):
        return (torch.fake_quantize_per_tensor_affine(args[0], self.scale, 0, -128, 127), *args[1:])


def input_ranges(model: nn.Module, batches: torch.Tensor, percentile: float, chunk: int = 16) -> Dict[str, float]:
    """Each quantized layer's input amax: the largest per-chunk `percentile` of |x| (a sample of
    at most 2^20 values a chunk, since torch.quantile takes no more than 2^24)."""
    found: Dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)

    def observer(name):
        def hook(module, args):
            values = args[0].detach().abs().flatten()
            if values.numel() > 1 << 20:
                values = values[torch.randint(values.numel(), (1 << 20,), generator=generator)]
            found[name] = max(found.get(name, 0.0), float(torch.quantile(values.float(), percentile / 100)))
        return hook

    handles = [m.register_forward_pre_hook(observer(n)) for n, m in model.named_modules() if isinstance(m, QUANTIZED)]
    with torch.no_grad():
        for start in range(0, len(batches), chunk):
            model(batches[start:start + chunk])
    for handle in handles:
        handle.remove()
    return found


def fake_quantize(model: nn.Module, ranges: Dict[str, float]) -> List:
    """Simulate INT8 in every convolution and linear layer; returns the hooks to remove."""
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED):
            parametrize.register_parametrization(module, "weight", ChannelFakeQuant())
            hooks.append(module.register_forward_pre_hook(InputFakeQuant(ranges[name])))
    return hooks


def plain(model: nn.Module, hooks: List) -> nn.Module:
    """The fine-tuned FP32 weights with the simulation taken out."""
    for hook in hooks:
        hook.remove()
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return model


def quantization_aware_finetune(config: Config, checkpoint: Path, manifest: Manifest, files: List[Path],
                                out: Path, metadata: Dict[str, str], progress: bool = True,
                                also_learn: Sequence[Path] = ()) -> Path:
    """Fine-tune `checkpoint` with simulated INT8 on the calibration `files` and `also_learn`
    (the simulated ranges come from the calibration files alone, as the Q/DQ model's will);
    write its FP32 ONNX (with `metadata`) to `out`."""
    cfg = config.calibration.qat
    if not checkpoint.is_file():
        raise ModelError(f"{checkpoint}: quantization-aware fine-tuning starts from the trained checkpoint; "
                         f"train first, or set calibration.qat.epochs: 0")
    torch.manual_seed(config.calibration.seed)
    reference, ckpt = model_from_checkpoint(checkpoint)
    spec = ckpt["preprocess_spec"]
    items = _calibration_items(manifest, files)
    still = ManifestDataset(manifest, items, Preprocessor(spec))
    student = copy.deepcopy(reference)
    hooks = fake_quantize(student, input_ranges(student, torch.stack([still[i][0] for i in range(len(still))]),
                                                cfg.percentile))
    items += _calibration_items(manifest, also_learn) if also_learn else []
    if progress:
        print(f"quantization-aware fine-tuning on {len(items)} images ({len(items) - len(also_learn)} calibration, "
              f"{len(also_learn)} set aside from the selection images)", flush=True)
    augmented = ManifestDataset(manifest, items, Preprocessor(spec), Augment(config.train.augment, spec.input_size))
    _learn_answers(student, reference, make_loader(augmented, min(cfg.batch_size, len(items)), 0,
                                                   config.calibration.seed), cfg, progress)
    model = plain(student, hooks).eval()
    export_onnx(model, torch.zeros(1, 3, spec.input_size, spec.input_size), out, config.export.opset, False, metadata)
    return out


def _calibration_items(manifest: Manifest, files: List[Path]):
    wanted = {str(Path(f)) for f in files}
    items = [i for i in manifest.items if str(manifest.absolute(i)) in wanted and i.split != "test"]
    if not items:
        raise ModelError("none of the calibration images is a train or val image of the manifest; "
                         "quantization-aware fine-tuning learns from them (run `scrapsort calibrate` "
                         "without --set, or set calibration.qat.epochs: 0)")
    return items


def _learn_answers(student: nn.Module, reference: nn.Module, loader, cfg, progress: bool) -> None:
    """Adam on every weight towards the reference's answers (KL divergence). A temperature (4)
    did no better: docs/int8.md."""
    for param in student.parameters():
        param.requires_grad = True
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    for epoch in range(1, cfg.epochs + 1):
        student.eval()  # BatchNorm keeps its statistics: TensorRT folds them into the INT8 weights
        total, seen = 0.0, 0
        for inputs, _ in loader:
            with torch.no_grad():
                target = torch.log_softmax(reference(inputs), dim=1)
            loss = nn.functional.kl_div(torch.log_softmax(student(inputs), dim=1), target, reduction="batchmean",
                                        log_target=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(inputs), seen + len(inputs)
        if progress:
            print(f"quantization-aware epoch {epoch}/{cfg.epochs}: divergence from FP32 {total / seen:.4f}",
                  flush=True)
