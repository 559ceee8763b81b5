"""Data-parallel training across processes: `torchrun --nproc_per_node N -m edge.cli train`.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK (and MASTER_ADDR/PORT for several nodes); without
them training runs as one process, unchanged. Every process holds the whole model and a shard
of each global batch (`train.batch_size` stays the global batch, so a recipe means the same on
any number of processes); DistributedDataParallel averages the gradients. Rank 0 alone writes
checkpoints and prints; every process reads the same checkpoint to resume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from edge.errors import ConfigError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on a node (LOCAL_RANK); the CPU is shared."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.active else device

    def shard_batch(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise ConfigError(f"train.batch_size {global_batch} is the global batch and must divide by the "
                              f"{self.world} processes (e.g. {global_batch - global_batch % self.world})")
        return global_batch // self.world

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.active:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sum(self, *values: float) -> List[float]:
        """Each value summed over the processes (loss and hit counts of each shard)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda(self.local_rank)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def sum_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """A tensor summed over the processes (outside autograd)."""
        if not self.active:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def join(device: torch.device) -> Group:
    """The process group torchrun describes in the environment, or a group of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group()
    group = Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(group.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return group


class GlobalBatchLoss:
    """Cross-entropy (class-weighted, label-smoothed) as the mean over the global batch.

    Each process's batch weighs its share: its weighted loss sum over the whole batch's weight
    (summed over the processes), times the processes DDP divides the gradients by. So the
    averaged gradient is the one process's gradient, even when the shards hold different
    classes (a mean per shard would weigh each shard alike)."""

    def __init__(self, weight: Optional[torch.Tensor], label_smoothing: float, group: Group):
        self.per_item = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, reduction="none")
        self.weight, self.group = weight, group

    def sums(self, logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """This shard's weighted loss sum and weight sum (their ratio over all shards is the mean)."""
        losses, weights = self.items(logits, labels)
        return losses.sum(), weights.sum()

    def items(self, logits: torch.Tensor, labels: torch.Tensor, mix=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each item's weighted loss and weight. A mixed batch (train.recipe.Mix) scores each
        blend against both its labels, in the blend's proportion, and weighs it the same way."""
        losses, weights = self.per_item(logits, labels), self._weights(labels, logits.dtype)
        if mix is None:
            return losses, weights
        other = self.per_item(logits, mix.labels), self._weights(mix.labels, logits.dtype)
        return (mix.weight * losses + (1 - mix.weight) * other[0],
                mix.weight * weights + (1 - mix.weight) * other[1])

    def _weights(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.weight[labels] if self.weight is not None else torch.ones_like(labels, dtype=dtype)

    def for_step(self, loss_sum: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
        """What to call backward() on: the same number on every process count."""
        return loss_sum * self.group.world / self.group.sum_tensor(weight_sum)


class ShardedShuffle(Sampler[int]):
    """One permutation per epoch (seeded by seed and epoch), dealt out round-robin: process r
    takes positions r, r + N, ... So shard b of every process together is exactly batch b of
    a single process with the same seed and global batch. The list is padded with its start to
    a multiple of N, so every process runs the same number of steps (DDP needs that)."""

    def __init__(self, size: int, group: Group, seed: int):
        self.size, self.group, self.seed, self.epoch = size, group, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> List[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        padding = -len(order) % self.group.world
        return order + order[:padding]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.group.rank::self.group.world])

    def __len__(self) -> int:
        return -(-self.size // self.group.world)


def shard(indices: Sequence[int], group: Group) -> List[int]:
    """Evaluation shards: every item once over all processes (summed with Group.sum)."""
    return list(indices)[group.rank::group.world]
