"""The stronger-recipe parts of a training step: layer-wise rate decay, mixup/cutmix, and
distillation from a trained teacher. Each is off by default (train.layer_decay, train.mix,
train.distill) and compared by `scrapsort cv`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn

from edge.config import DistillConfig, MixConfig
from edge.errors import ModelError
from edge.vision.preprocess import PreprocessSpec
from train.checkpoint import BEST, model_from_checkpoint
from train.models import head, stages


def param_groups(model: nn.Module, backbone: str, lr: float, backbone_scale: float = 1.0,
                 layer_decay: float = 1.0) -> List[dict]:
    """The new head at `lr`; the trainable pretrained layers at lr * backbone_scale, and with
    layer_decay < 1 each stage below the top layer_decay times slower than the one above it
    (low layers hold generic filters that a small data set should barely move)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_scale == 1.0 and layer_decay == 1.0:  # one group (as older checkpoints resume)
        return [{"params": trainable, "lr": lr}]
    head_ids = {id(p) for p in head(model, backbone).parameters()}
    groups = [{"params": [p for p in trainable if id(p) in head_ids], "lr": lr}]
    if layer_decay == 1.0:
        return groups + [{"params": [p for p in trainable if id(p) not in head_ids], "lr": lr * backbone_scale}]
    trainable_ids = {id(p) for p in trainable}
    levels = [[p for p in stage.parameters() if id(p) in trainable_ids] for stage in stages(model, backbone)]
    in_stages = {id(p) for level in levels for p in level}
    # Layers between the last stage and the head (Lite's 1x1 head convolution) are the top level.
    top = [p for p in trainable if id(p) not in head_ids and id(p) not in in_stages]
    levels = levels + [top] if top else levels
    for depth, params in enumerate(reversed(levels)):
        if params:
            groups.append({"params": params, "lr": lr * backbone_scale * layer_decay ** depth})
    return groups


@dataclass
class Mix:
    """A mixed batch's second labels and the first labels' weight."""
    labels: torch.Tensor
    weight: float


class Mixer:
    """Mixup or cutmix on a normalised batch: each image blended with another of the batch."""

    def __init__(self, cfg: MixConfig):
        self.cfg = cfg
        self.kinds = [kind for kind, alpha in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha)) if alpha > 0]

    @property
    def active(self) -> bool:
        return bool(self.kinds) and self.cfg.prob > 0

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Optional[Mix]]:
        if not self.active or len(labels) < 2 or float(torch.rand(())) >= self.cfg.prob:
            return inputs, None
        kind = self.kinds[int(torch.randint(len(self.kinds), ()))]
        alpha = self.cfg.mixup_alpha if kind == "mixup" else self.cfg.cutmix_alpha
        weight = float(torch.distributions.Beta(alpha, alpha).sample())
        order = torch.randperm(len(labels))
        if kind == "mixup":
            return weight * inputs + (1 - weight) * inputs[order], Mix(labels[order], weight)
        height, width = inputs.shape[-2:]
        box_h, box_w = int(height * (1 - weight) ** 0.5), int(width * (1 - weight) ** 0.5)
        top, left = int(torch.randint(height - box_h + 1, ())), int(torch.randint(width - box_w + 1, ()))
        mixed = inputs.clone()
        mixed[..., top:top + box_h, left:left + box_w] = inputs[order][..., top:top + box_h, left:left + box_w]
        return mixed, Mix(labels[order], 1 - box_h * box_w / (height * width))  # the area actually kept


class Teacher:
    """A trained model whose softened answers the student also learns (Hinton et al.'s
    distillation: KL divergence at a temperature, scaled by its square)."""

    def __init__(self, cfg: DistillConfig, spec: PreprocessSpec, classes: List[str], device: torch.device):
        path = Path(cfg.teacher)
        path = path / BEST if path.is_dir() else path
        self.model, ckpt = model_from_checkpoint(path)
        teacher_spec = ckpt["preprocess_spec"]
        if list(ckpt["classes"]) != list(classes):
            raise ModelError(f"train.distill.teacher {path}: classes {ckpt['classes']}, the student's {classes}; "
                             f"train the teacher on the same classes")
        if (teacher_spec.mean, teacher_spec.std) != (spec.mean, spec.std):
            raise ModelError(f"train.distill.teacher {path}: normalised with mean {teacher_spec.mean} std "
                             f"{teacher_spec.std}, the student with {spec.mean} {spec.std}; pick a teacher of the "
                             f"same family (the EfficientNet-Lite models share one)")
        self.model.to(device)
        self.size, self.weight, self.temperature = teacher_spec.input_size, cfg.weight, cfg.temperature
        self.name = f"{ckpt['backbone']} from {path}"

    def blend(self, losses: torch.Tensor, weights: torch.Tensor, student: torch.Tensor,
              inputs: torch.Tensor) -> torch.Tensor:
        """Per-item losses with the teacher's share; each item's distillation term weighs as
        its label does (class weights), so the weighted mean stays a weighted mean."""
        if inputs.shape[-1] != self.size:  # the teacher sees the same view at its own size
            inputs = nn.functional.interpolate(inputs, size=(self.size, self.size), mode="bilinear",
                                               antialias=True)
        with torch.no_grad():
            target = torch.log_softmax(self.model(inputs).float() / self.temperature, dim=1)
        log_student = torch.log_softmax(student / self.temperature, dim=1)
        divergence = nn.functional.kl_div(log_student, target, reduction="none", log_target=True).sum(1)
        return (1 - self.weight) * losses + self.weight * self.temperature ** 2 * divergence * weights
