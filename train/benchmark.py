"""`scrapsort train --benchmark`: where a training epoch's time goes on this machine.

Measured in one run, on the run's own cached training images: the input pipeline alone
(decode-free: cached uint8 images, augmentation, normalisation, batching with the configured
workers) and one optimiser step (forward + backward + update) per batch in each variant that
could make it faster; the epoch time follows from the configured variant and the pipeline.
Each variant is a ratio against plain fp32 NCHW eager in the same run, so a number from
another day or machine is never compared with it. Variants that this CPU or PyTorch cannot
run are listed with the reason.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from edge.config import Config
from edge.service.bench import cpu_description, machine
from edge.vision.dataset import MANIFEST_NAME, Manifest
from edge.vision.preprocess import Preprocessor, PreprocessSpec
from train.data import Augment, ManifestDataset, cache_resized, make_loader
from train.distributed import Group, ShardedShuffle
from train.models import build_model, freeze_stages, set_train_mode
from train.recipe import param_groups

BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # CPUs on which bf16 matmuls run natively
PLAIN = "fp32, NCHW, eager"  # no speed-up: every ratio is against this


def benchmark(config: Config, steps: int = 8, warmup: int = 2, progress: bool = True,
              only: Optional[List[str]] = None) -> Dict:
    """Every variant, or those named in `only` (the plain one always comes first)."""
    cfg = config.train
    manifest = Manifest.load(config.run_path / MANIFEST_NAME)
    spec = PreprocessSpec.for_backbone(config.model.backbone, config.model.input_size, config.preprocess.normalisation)
    pre = Preprocessor(spec)
    items = manifest.split("train")[: cfg.batch_size * (steps + warmup)]
    dataset = ManifestDataset(manifest, items, pre, Augment(cfg.augment, spec.input_size),
                              cache_resized(manifest, items, pre, progress))
    loader = make_loader(dataset, cfg.batch_size, 0, cfg.seed, ShardedShuffle(len(dataset), Group(), cfg.seed))
    batches = [batch for batch, _ in zip(loader, range(steps + warmup))]
    result = {"machine": machine(), "batch_size": cfg.batch_size, "input_size": spec.input_size,
              "backbone": config.model.backbone, "freeze_stages": config.model.freeze_stages,
              "train_images": len(manifest.split("train")), "torch_threads": torch.get_num_threads(),
              "input_pipeline": _input_pipeline(dataset, cfg, steps + warmup), "steps": []}
    chosen = [(name, setup) for name, setup in _variants(result["machine"].get("cpu_flags", []), spec.input_size)
              if only is None or name in only or name == PLAIN]
    result["steps"] = _time_steps(chosen, config, manifest, batches, warmup)
    base = result["steps"][0].get("images_per_s")
    for row in result["steps"]:
        if base and row.get("images_per_s"):
            row["speedup"] = row["images_per_s"] / base
    result["configured"] = "channels_last" if cfg.channels_last else PLAIN
    result["epoch"] = _epoch_estimate(result)
    (config.run_path / "train_benchmark.json").write_text(json.dumps(result, indent=1))
    return result


def _input_pipeline(dataset, cfg, batches: int) -> Dict:
    """Images per second the loader delivers, with the configured workers, nothing else running."""
    loader = make_loader(dataset, cfg.batch_size, cfg.workers, cfg.seed, ShardedShuffle(len(dataset), Group(), cfg.seed))
    started, seen = time.perf_counter(), 0
    for (inputs, _), _ in zip(loader, range(batches)):
        seen += len(inputs)
    return {"workers": cfg.workers, "images_per_s": seen / (time.perf_counter() - started)}


def low_res_sizes(input_size: int) -> List[int]:
    """train.low_res sizes: about 6/7, 5/7 and 4/7 of the side (192, 160 and 128 for 224), multiples
    of 32 (progressive resizing steps through them)."""
    return sorted({size for size in (input_size * 6 // 7 // 32 * 32, input_size * 5 // 7 // 32 * 32,
                                     input_size * 4 // 7 // 32 * 32)
                   if 32 <= size < input_size}, reverse=True)


def _variants(flags: List[str], input_size: int):
    """(name, setup) pairs; setup(model) -> (model, autocast context) or raises with the reason."""
    def plain(model):
        return model, nullcontext()

    def channels_last(model):
        return model.to(memory_format=torch.channels_last), nullcontext()

    def bf16(model):
        if not BF16_FLAGS & set(flags):
            raise RuntimeError("this CPU has no AVX512-BF16 or AMX: bf16 would be emulated, slower")
        return model.to(memory_format=torch.channels_last), torch.autocast("cpu", dtype=torch.bfloat16)

    def compiled(model):
        return torch.compile(model), nullcontext()

    def channels_last_compiled(model):
        return torch.compile(model.to(memory_format=torch.channels_last)), nullcontext()

    return [(PLAIN, plain), ("channels_last", channels_last), ("channels_last + bf16 autocast", bf16),
            ("torch.compile", compiled), ("channels_last + torch.compile", channels_last_compiled),
            *[(f"channels_last, {size} px (train.low_res)", channels_last) for size in low_res_sizes(input_size)]]


class _Trainer:
    """One variant's model, optimiser and autocast context, stepping on the shared batches."""

    def __init__(self, name: str, setup: Callable, config: Config, classes: int):
        torch.manual_seed(config.train.seed)
        model = build_model(config.model, classes, load_weights=False)
        freeze_stages(model, config.model.backbone, config.model.freeze_stages)
        self.name, self.times = name, []
        self.model, self.autocast = setup(model)
        self.channels_last = "channels_last" in name
        self.size = int(name.split(", ")[1].split(" px")[0]) if " px" in name else None
        self.optimizer = torch.optim.Adam(param_groups(self.model, config.model.backbone, config.train.lr,
                                                       config.train.backbone_lr_scale), lr=config.train.lr)
        self.criterion = nn.CrossEntropyLoss()
        set_train_mode(_inner(self.model), config.model.backbone, config.model.freeze_stages)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        if self.size:  # as the training loop scales its batches down (part of the step's cost)
            inputs = nn.functional.interpolate(inputs, size=(self.size, self.size), mode="bilinear", antialias=True)
        with self.autocast:
            loss = self.criterion(self.model(inputs), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started


def _time_steps(chosen, config: Config, manifest: Manifest, batches, warmup: int) -> List[Dict]:
    """Round-robin: each batch is stepped by every variant in turn, so a machine that speeds up
    or slows down during the run (a shared VM does) moves every variant alike."""
    trainers, rows = [], {}
    for name, setup in chosen:
        try:
            trainer = _Trainer(name, setup, config, len(manifest.classes))
            for inputs, labels in batches[:warmup]:  # first steps: allocation, compilation
                trainer.step(inputs, labels)
            trainers.append(trainer)
        except Exception as exc:  # no bf16 on this CPU, torch.compile without a C compiler, ...
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            rows[name] = {"variant": name, "skipped": reason}
    for inputs, labels in batches[warmup:]:
        for trainer in trainers:
            trainer.times.append(trainer.step(inputs, labels))
    for trainer in trainers:
        per_step = sorted(trainer.times)[len(trainer.times) // 2]
        rows[trainer.name] = {"variant": trainer.name, "step_ms_p50": per_step * 1000,
                              "images_per_s": len(batches[0][0]) / per_step}
    return [rows[name] for name, _ in chosen]


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


def _epoch_estimate(result: Dict) -> Dict:
    """An epoch at the configured step rate: the loader and the steps share the same cores, so
    their times add up (with one core each, the slower of the two would set the pace)."""
    rows = {row["variant"]: row for row in result["steps"]}
    step = rows.get(result["configured"], result["steps"][0]).get("images_per_s")
    data = result["input_pipeline"]["images_per_s"]
    if not step:
        return {}
    seconds = result["train_images"] * (1 / step + 1 / data)
    return {"seconds": seconds, "minutes": seconds / 60, "step_share": (1 / step) / (1 / step + 1 / data)}


def table(result: Dict) -> str:
    m = result["machine"]
    lines = [f"training throughput: {result['backbone']} at {result['input_size']} px, batch {result['batch_size']}, "
             f"{result['freeze_stages']} stages frozen; {cpu_description(m)}, torch {m.get('torch')}, "
             f"{result['torch_threads']} threads",
             f"input pipeline ({result['input_pipeline']['workers']} workers): "
             f"{result['input_pipeline']['images_per_s']:.1f} images/s",
             f"{'step variant':<32}{'ms/step':>10}{'images/s':>10}{'vs plain':>10}"]
    for row in result["steps"]:
        if "skipped" in row:
            lines.append(f"{row['variant']:<32}  skipped: {row['skipped']}")
        else:
            lines.append(f"{row['variant']:<32}{row['step_ms_p50']:>10.1f}{row['images_per_s']:>10.1f}"
                         f"{row.get('speedup', 1.0):>9.2f}x")
    epoch = result["epoch"]
    if epoch:
        lines.append(f"epoch of {result['train_images']} images as configured ({result['configured']}): "
                     f"{epoch['minutes']:.1f} min "
                     f"({epoch['step_share']:.0%} in forward/backward, the rest in the input pipeline)")
    return "\n".join(lines)
