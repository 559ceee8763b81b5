"""`scrapsort train`: fine-tune an ImageNet backbone on the manifest's train split.

Read top to bottom: seed, data, model, optimiser, loop (train, validate, schedule,
checkpoint, early stop). Resumable from last.pt; best.pt is the model to use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from edge.config import Config
from edge.errors import ConfigError, ModelError
from edge.vision.preprocess import Preprocessor, PreprocessSpec
from train.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from train.data import Augment, ManifestDataset, cache_resized, class_weights, make_loader
from train.distributed import GlobalBatchLoss, Group, ShardedShuffle, join, shard
from train.models import build_model, freeze_stages, head, set_train_mode
from train.recipe import Mixer, Teacher, param_groups
from edge.vision.dataset import MANIFEST_NAME, Manifest

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def mixed_precision(device: torch.device) -> Optional[torch.autocast]:
    """bf16 autocast for the forward pass on GPUs that have it (no loss scaling needed); None
    (fp32) elsewhere: the CPU step variants are measured by `scrapsort train --benchmark`."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return None


def where(device: torch.device, group: Group, autocast) -> str:
    """What ran where, for the log and each epoch's record: device, its name or the CPU and
    threads, arithmetic, processes (an epoch time means nothing without it)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        from edge.service.bench import cpu_name
        name = f"{torch.get_num_threads()} threads of {cpu_name()}"
    processes = f", process {group.rank + 1} of {group.world}" if group.active else ""
    return f"{device} ({name}, {'bf16 autocast' if autocast else 'fp32'}{processes})"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train(config: Config, resume: bool = False, progress: bool = True, init_from: Optional[Path] = None,
          final: bool = False) -> Dict:
    """One process, or one of the processes torchrun started (train/distributed.py). `final`:
    train on train + val (all non-test images) for train.epochs, as `scrapsort cv` chose them."""
    seed_everything(config.train.seed)
    group = join(pick_device(config.train.device))
    try:
        return _train(config, group, resume, progress and group.main, init_from, final)
    finally:
        group.close()


def _train(config: Config, group: Group, resume: bool, progress: bool, init_from: Optional[Path],
           final: bool) -> Dict:
    run_dir = config.run_path
    cfg = config.train
    device = group.device(pick_device(cfg.device))
    autocast = mixed_precision(device)
    ran_on = where(device, group, autocast)
    if group.main:
        print(f"training on {ran_on}", flush=True)

    # Data: the manifest's splits, preprocessed by the shared edge code.
    manifest = Manifest.load(run_dir / MANIFEST_NAME)
    spec = PreprocessSpec.for_backbone(config.model.backbone, config.model.input_size,
                                       config.preprocess.normalisation)
    pre = Preprocessor(spec)
    train_items, val_items = manifest.split("train"), manifest.split("val")
    if final:
        train_items, val_items = train_items + val_items, []
    if cfg.low_res.size >= spec.input_size:
        raise ConfigError(f"train.low_res.size {cfg.low_res.size} must be below model.input_size {spec.input_size}")
    if not val_items and cfg.schedule == "plateau":
        raise ConfigError("no validation split to train against (--final, or a manifest without one): "
                          "train.schedule plateau reads validation accuracy; set train.schedule: cosine")
    cache = cache_resized(manifest, train_items + val_items, pre, progress) if cfg.cache_images else None
    train_set = ManifestDataset(manifest, train_items, pre, Augment(cfg.augment, spec.input_size), cache)
    val_set = ManifestDataset(manifest, val_items, pre, None, cache)
    batch = group.shard_batch(cfg.batch_size)
    sampler = ShardedShuffle(len(train_set), group, cfg.seed)
    train_loader = make_loader(train_set, batch, cfg.workers, cfg.seed + group.rank, sampler)
    val_loader = make_loader(Subset(val_set, shard(range(len(val_set)), group)), batch, cfg.workers, cfg.seed)

    # Model, loss, optimiser, schedule.
    model = build_model(config.model, len(manifest.classes), load_weights=init_from is None)
    if init_from is not None and not (resume and (run_dir / LAST).is_file()):
        started_from = init_weights(model, config, spec, manifest.classes, init_from)
        log.info("starting from %s", started_from)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout)
    freeze_stages(model, config.model.backbone, config.model.freeze_stages)
    torch.manual_seed(cfg.seed + group.rank)  # each process its own augmentations (the weights start alike)
    weights = class_weights(train_items, manifest.classes).to(device) if cfg.class_weights else None
    criterion = GlobalBatchLoss(weights, cfg.label_smoothing, group)
    optimizer = torch.optim.Adam(param_groups(model, config.model.backbone, cfg.lr, cfg.backbone_lr_scale,
                                              cfg.layer_decay), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    # The averaged weights (when on) are what is validated, kept and exported: they move less
    # from batch to batch, so the best-on-validation epoch is less a matter of luck.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay > 0 else None
    kept = ema.module if ema is not None else model
    state = {"epoch": 0, "best_val_acc": -1.0, "stale_epochs": 0, "history": []}
    if resume and (run_dir / LAST).is_file():
        state = _resume(run_dir / LAST, model, ema, optimizer, scheduler)
        log.info("resumed from %s after epoch %d", run_dir / LAST, state["epoch"])
    stepped = group.wrap(model, device)  # what the optimiser steps: the model, or its DDP wrapper
    teacher = Teacher(cfg.distill, spec, manifest.classes, device) if cfg.distill.teacher else None
    if teacher is not None and group.main:
        print(f"distilling from {teacher.name}", flush=True)
    step = TrainStep(optimizer, ema, autocast=autocast, mixer=Mixer(cfg.mix), teacher=teacher)

    def checkpoint() -> Dict:
        averaged = {} if ema is None else {"trained_model": model.state_dict(), "ema_updates": int(ema.n_averaged)}
        return {"model": kept.state_dict(), **averaged, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "config": config.to_dict(),
                "classes": manifest.classes, "preprocess": spec.to_json(),
                "backbone": config.model.backbone, "torch_rng": torch.get_rng_state(), **state}

    # The loop.
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if state["stale_epochs"] >= cfg.early_stop_patience:
            log.info("early stop: no validation improvement for %d epochs", state["stale_epochs"])
            break
        started = time.monotonic()
        set_train_mode(model, config.model.backbone, config.model.freeze_stages)
        sampler.set_epoch(epoch)
        size = cfg.low_res.size_at(epoch, spec.input_size)
        train_loss, train_acc = group_mean(group, _run_epoch(stepped, train_loader, criterion, device,
                                                             f"epoch {epoch}/{cfg.epochs}", progress, layout,
                                                             dataclasses.replace(step, size=size)))
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                  "size": size or spec.input_size}
        if ema is not None and val_items:  # the raw weights' score too, so the average's effect shows
            record["raw_val_loss"], record["raw_val_acc"] = group_mean(
                group, _validate(model, val_loader, criterion, device, progress, layout))
        # Without a validation split (a final fit) every epoch counts as the best: the last is kept.
        val_loss, val_acc = group_mean(group, _validate(kept, val_loader, criterion, device, progress, layout)) \
            if val_items else (float("nan"), 1.0)
        scheduler.step(val_acc) if cfg.schedule == "plateau" else scheduler.step()
        state["history"].append({**record, "val_loss": val_loss, "val_acc": val_acc if val_items else None,
                                 "lr": optimizer.param_groups[0]["lr"], "seconds": time.monotonic() - started,
                                 "ran_on": ran_on})
        state["epoch"] = epoch
        improved = val_acc >= state["best_val_acc"] if not val_items else val_acc > state["best_val_acc"]
        state["best_val_acc"] = max(val_acc, state["best_val_acc"])
        state["stale_epochs"] = 0 if improved else state["stale_epochs"] + 1
        if group.main:
            if improved:
                save_checkpoint(checkpoint(), run_dir / BEST)
            save_checkpoint(checkpoint(), run_dir / LAST)
            scored = f"val loss {val_loss:.3f} acc {val_acc:.3f}{' (best)' if improved else ''}" if val_items \
                else "no validation split"
            print(f"epoch {epoch}: train loss {train_loss:.3f} acc {train_acc:.3f} | {scored}", flush=True)
        group.barrier()  # a restart after this epoch finds its checkpoint on every process

    if group.main:
        (run_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
    return {"best_val_acc": state["best_val_acc"], "epochs": state["epoch"], "checkpoint": str(run_dir / BEST),
            "main_process": group.main}


def init_weights(model: nn.Module, config: Config, spec: PreprocessSpec, classes, source: Path) -> str:
    """Start from a trained model (a run dir or its checkpoint) instead of ImageNet: the
    backbone and each class's head row by class name. A class the source lacks gets a new
    row (its layer's default init, bias at the other rows' mean, so it starts neither favoured
    nor ruled out); a class the config dropped is refused, since the line would lose a bin."""
    path = Path(source)
    path = path / BEST if path.is_dir() else path
    ckpt = load_checkpoint(path)
    if ckpt.get("backbone") != config.model.backbone:
        raise ModelError(f"{path}: a {ckpt.get('backbone')} model; the config trains {config.model.backbone} "
                         f"(set model.backbone to match, or train from ImageNet weights without --init-from)")
    if PreprocessSpec.from_json(ckpt["preprocess"]) != spec:
        raise ModelError(f"{path}: preprocessed as {ckpt['preprocess']}, the config as {spec.to_json()}; "
                         f"set model.input_size and preprocess.normalisation to match")
    old = list(ckpt["classes"])
    dropped = [c for c in old if c not in classes]
    if dropped:
        raise ModelError(f"{path}: classes {dropped} are not in this config's classes; keep every class "
                         f"(a new one may be added) or train without --init-from")
    layer = [m for m in head(model, config.model.backbone).modules() if isinstance(m, nn.Linear)][-1]
    prefix = next(name for name, m in model.named_modules() if m is layer) + "."
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith(prefix)}
    model.load_state_dict(state, strict=False)
    missing = set(model.state_dict()) - set(state) - {prefix + "weight", prefix + "bias"}
    if missing:
        raise ModelError(f"{path}: its weights do not fit this model ({sorted(missing)[:3]} missing)")
    with torch.no_grad():
        old_weight, old_bias = ckpt["model"][prefix + "weight"], ckpt["model"][prefix + "bias"]
        layer.bias.fill_(float(old_bias.mean()))
        for index, name in enumerate(classes):
            if name in old:
                layer.weight[index] = old_weight[old.index(name)]
                layer.bias[index] = old_bias[old.index(name)]
    added = [c for c in classes if c not in old]
    return f"{path} ({len(old)} classes{'; new: ' + ', '.join(added) if added else ''})"


def make_scheduler(optimizer: torch.optim.Optimizer, cfg):
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience)
    warmup, decay = cfg.warmup_epochs, max(1, cfg.epochs - cfg.warmup_epochs)

    def factor(done: int) -> float:  # of the base rate, for the epoch after `done` epochs
        if done < warmup:
            return (done + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (done - warmup) / decay))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def group_mean(group: Group, sums) -> tuple:
    """Mean loss and accuracy over all processes' shards, from each one's sums."""
    loss, weight, correct, seen = group.sum(*sums)
    return loss / max(weight, 1e-12), correct / max(seen, 1)


@dataclasses.dataclass
class TrainStep:
    """What a training pass does beyond scoring: step the optimiser and the average, scale the
    batches (train.low_res), autocast, mix (train.mix), learn from a teacher (train.distill)."""
    optimizer: torch.optim.Optimizer
    ema: Optional[AveragedModel] = None
    size: Optional[int] = None
    autocast: Optional[torch.autocast] = None
    mixer: Optional[Mixer] = None
    teacher: Optional[Teacher] = None


def _validate(model: nn.Module, loader, criterion, device: torch.device, progress: bool,
              layout=torch.contiguous_format):
    model.eval()
    with torch.no_grad():
        return _run_epoch(model, loader, criterion, device, "validate", progress, layout)


def _run_epoch(model: nn.Module, loader, criterion: GlobalBatchLoss, device: torch.device, desc: str,
               progress: bool, layout=torch.contiguous_format, step: Optional[TrainStep] = None):
    """One pass (a training one with `step`); returns this process's sums (weighted loss,
    weight, correct, seen). Accuracy on a mixed batch counts each blend's larger part's label."""
    total_loss, total_weight, correct, seen = 0.0, 0.0, 0, 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)
    for inputs, labels in bar:
        if step is not None and step.size is not None:
            inputs = nn.functional.interpolate(inputs, size=(step.size, step.size), mode="bilinear", antialias=True)
        inputs, labels = inputs.to(device, memory_format=layout), labels.to(device)
        inputs, mix = step.mixer(inputs, labels) if step is not None and step.mixer is not None else (inputs, None)
        with (step and step.autocast) or contextlib.nullcontext():  # the forward only; backward follows its types
            logits = model(inputs)
            losses, weights = criterion.items(logits.float(), labels, mix)
            if step is not None and step.teacher is not None:
                losses = step.teacher.blend(losses, weights, logits.float(), inputs)
        loss_sum, weight_sum = losses.sum(), weights.sum()
        if step is not None:
            step.optimizer.zero_grad(set_to_none=True)
            criterion.for_step(loss_sum, weight_sum).backward()
            step.optimizer.step()
            if step.ema is not None:
                step.ema.update_parameters(getattr(model, "module", model))  # the weights, not a DDP wrapper
        total_loss, total_weight = total_loss + loss_sum.item(), total_weight + weight_sum.item()
        target = labels if mix is None or mix.weight >= 0.5 else mix.labels
        correct += (logits.argmax(1) == target).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / total_weight:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss, total_weight, correct, seen


def _resume(path: Path, model: nn.Module, ema: Optional[AveragedModel], optimizer, scheduler) -> Dict:
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))
    if ema is not None:  # a checkpoint from a run without the average starts it from its weights
        ema.module.load_state_dict(ckpt["model"])
        ema.n_averaged.fill_(ckpt.get("ema_updates", 1))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["torch_rng"])
    return {k: ckpt[k] for k in ("epoch", "best_val_acc", "stale_epochs", "history")}
