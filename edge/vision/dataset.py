"""A split manifest and a model's predictions on one of its splits, without torch: the
benchmark and the device score models with exactly what `scrapsort evaluate` uses."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Tuple

import numpy as np

from edge.errors import DataError, ImageError, ModelError
from edge.vision.backends import open_backend
from edge.vision.images import read_image
from edge.vision.predict import Classifier

log = logging.getLogger(__name__)
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Item:
    path: str  # relative to the manifest's data root
    label: str
    split: str
    sha256: str


@dataclass
class Manifest:
    data_root: str
    classes: List[str]
    seed: int
    items: List[Item]

    def split(self, name: str) -> List[Item]:
        return [item for item in self.items if item.split == name]

    def absolute(self, item: Item) -> Path:
        return Path(self.data_root) / item.path

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"data_root": self.data_root, "classes": self.classes, "seed": self.seed,
                "items": [asdict(item) for item in self.items]}
        path.write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        if not path.is_file():
            raise DataError(f"{path}: no split manifest; run `scrapsort prepare` first")
        data = json.loads(path.read_text())
        return cls(data["data_root"], data["classes"], data["seed"], [Item(**i) for i in data["items"]])


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
