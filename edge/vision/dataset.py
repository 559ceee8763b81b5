"""A split manifest and a model's predictions on one of its splits, without torch: the
benchmark and the device score models with exactly what `scrapsort evaluate` uses."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from edge.errors import DataError, ImageError, ModelError
from edge.vision.backends import open_backend
from edge.vision.images import read_image
from edge.vision.predict import Classifier

log = logging.getLogger(__name__)
MANIFEST_NAME = "manifest.json"
REVIEW_LOG = "reviews.jsonl"  # in a review folder: who filed which image, when, from which decision


@dataclass(frozen=True)
class Item:
    path: str  # relative to its root
    label: str
    split: str
    sha256: str
    root: int = 0  # index into Manifest.roots
    reviewed: Optional[Dict] = None  # a review folder's image: who filed it, when, from which decision


@dataclass(frozen=True)
class Root:
    path: str
    kind: str = "dataset"  # "dataset" | "review" (written by the operator page)


@dataclass
class Manifest:
    roots: List[Root]
    classes: List[str]
    seed: int
    items: List[Item]
    frozen_test: Optional[str] = None  # the frozen test set this manifest's test split follows

    @property
    def data_root(self) -> str:
        return self.roots[0].path

    def split(self, name: str) -> List[Item]:
        return [item for item in self.items if item.split == name]

    def absolute(self, item: Item) -> Path:
        return Path(self.roots[item.root].path) / item.path

    def subset(self, items: List[Item]) -> "Manifest":
        return replace(self, items=list(items))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"roots": [asdict(r) for r in self.roots], "classes": self.classes, "seed": self.seed,
                "frozen_test": self.frozen_test,
                "items": [{k: v for k, v in asdict(item).items() if v is not None} for item in self.items]}
        path.write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        if not path.is_file():
            raise DataError(f"{path}: no split manifest; run `scrapsort prepare` first")
        data = json.loads(path.read_text())
        # A manifest of one dataset folder (before review folders could be added) names it data_root.
        roots = [Root(**r) for r in data["roots"]] if "roots" in data else [Root(data["data_root"])]
        return cls(roots, data["classes"], data["seed"], [Item(**i) for i in data["items"]],
                   data.get("frozen_test"))


def predict_split(model_path: Path, manifest: Manifest, split: str, progress: Callable[[Iterable], Iterable] = iter,
                  **backend_options) -> Tuple[np.ndarray, List[int], Dict]:
    """(logits NxC, true label indices, backend description) for every readable image of a split."""
    items = manifest.split(split)
    if not items:
        raise ModelError(f"split '{split}' is empty in the manifest; re-run `scrapsort prepare`")
    with open_backend(model_path, **backend_options) as backend:
        if list(backend.info.classes) != list(manifest.classes):
            raise ModelError(f"{model_path}: model classes {list(backend.info.classes)} differ from the "
                             f"manifest's {manifest.classes}; evaluate with the matching config")
        classifier = Classifier(backend)
        logits, labels = [], []
        for item in progress(items):
            try:
                logits.append(classifier.logits(read_image(manifest.absolute(item))).copy())
            except ImageError as exc:
                log.warning("skipped: %s", exc)
                continue
            labels.append(manifest.classes.index(item.label))
        about = {"backend": backend.name, "precision": backend.info.precision, "sha256": backend.info.sha256,
                 "unfused_int8": backend.unfused_int8}
    return np.stack(logits), labels, about
