"""Datasets over the split manifest, built on the shared edge preprocessing.

Each sample is resized by edge.vision.preprocess (the same code the belt runs), augmented as uint8
at model resolution (train split only), then normalised by the same shared code.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from edge.config import AugmentConfig
from edge.errors import ImageError
from edge.vision.images import read_image
from edge.vision.preprocess import Preprocessor
from edge.vision.dataset import Item, Manifest

log = logging.getLogger(__name__)


class Augment:
    """Flips, rotation, translation, scale and colour jitter on a uint8 CHW tensor, then the
    configured automatic policy (TrivialAugment or RandAugment), if any.

    Corners uncovered by rotation/translation are filled with the image's own border colour
    (the belt or backdrop), not black, so the model learns nothing from fill artefacts.
    """

    def __init__(self, cfg: AugmentConfig, size: int):
        self.cfg, self.size = cfg, size
        jitter = cfg.color_jitter
        self.color = v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < self.cfg.hflip:
            image = F.horizontal_flip(image)
        if torch.rand(()) < self.cfg.vflip:
            image = F.vertical_flip(image)
        border = torch.cat([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], dim=1)
        fill = border.float().median(dim=1).values.tolist()
        angle = float(torch.empty(()).uniform_(-self.cfg.rotation_deg, self.cfg.rotation_deg))
        shift = [int(torch.empty(()).uniform_(-self.cfg.translate, self.cfg.translate) * self.size) for _ in range(2)]
        scale = float(torch.empty(()).uniform_(1 - self.cfg.scale, 1 + self.cfg.scale))
        image = F.affine(image, angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0], fill=fill)
        image = self.color(image)
        if self.cfg.policy == "trivial":
            return v2.TrivialAugmentWide(fill=fill)(image)
        if self.cfg.policy == "randaugment":
            return v2.RandAugment(num_ops=2, magnitude=9, fill=fill)(image)
        return image


class ManifestDataset(Dataset):
    def __init__(self, manifest: Manifest, items: Sequence[Item], preprocessor: Preprocessor,
                 augment: Optional[Callable] = None, cache: Optional[Dict[str, np.ndarray]] = None):
        self.manifest, self.items, self.pre = manifest, list(items), preprocessor
        self.label_index = {name: i for i, name in enumerate(manifest.classes)}
        self.augment, self.cache = augment, cache

    def __len__(self) -> int:
        return len(self.items)

    def resized(self, item: Item) -> np.ndarray:
        if self.cache is not None and item.sha256 in self.cache:
            return self.cache[item.sha256]
        return self.pre.resize(read_image(self.manifest.absolute(item)))

    def __getitem__(self, index: int):
        item = self.items[index]
        image = self.resized(item)
        if self.augment is not None:
            image = self.augment(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        tensor = torch.empty((3, self.pre.spec.input_size, self.pre.spec.input_size))
        self.pre.normalise_into(image, tensor.numpy())
        return tensor, self.label_index[item.label]


def cache_resized(manifest: Manifest, items: Sequence[Item], pre: Preprocessor, progress: bool) -> Dict[str, np.ndarray]:
    """Decode and resize every image once; epochs then only augment (CPU time is the limit)."""
    from tqdm import tqdm

    cache = {}
    for item in tqdm(items, desc="caching images", unit="img", disable=not progress):
        try:
            cache[item.sha256] = pre.resize(read_image(manifest.absolute(item)))
        except ImageError as exc:  # the file changed since `prepare`
            raise ImageError(f"{exc}; re-run `scrapsort prepare`") from None
    return cache


def make_loader(dataset: Dataset, batch_size: int, workers: int, seed: int, sampler=None) -> DataLoader:
    """Batches in the sampler's order (training), else in the dataset's (evaluation)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      generator=generator, worker_init_fn=_seed_worker, persistent_workers=workers > 0)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def class_weights(items: Sequence[Item], classes: List[str]) -> torch.Tensor:
    """Inverse-frequency weights, mean 1, so the rare 'trash' class is not ignored."""
    counts = np.array([sum(1 for i in items if i.label == c) for c in classes], np.float64)
    weights = counts.sum() / np.maximum(counts, 1) / len(classes)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)
