"""The calibration set: stratified from the train split, preprocessed by the edge code.

Its description (files, classes, preprocessing) is saved next to the artefacts; a set whose
classes or preprocessing differ from the model's metadata is refused, because quantization
ranges measured on differently prepared images are wrong for the deployed model.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np

from edge.vision.backends.base import ModelInfo
from edge.errors import DataError
from edge.vision.images import read_image
from edge.vision.preprocess import Preprocessor, PreprocessSpec
from edge.vision.dataset import Item, Manifest

SET_NAME = "calibration_set.json"


def select_items(manifest: Manifest, count: int, seed: int) -> List[Item]:
    """`count` train images, each class in proportion to its share of the train split."""
    by_class: Dict[str, List[Item]] = defaultdict(list)
    for item in manifest.split("train"):
        by_class[item.label].append(item)
    total = sum(len(v) for v in by_class.values())
    if total == 0:
        raise DataError("the manifest has no train images to calibrate with; run `scrapsort prepare`")
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda i: i.path)
        share = max(1, round(count * len(items) / total))
        chosen += rng.sample(items, min(share, len(items)))
    return sorted(chosen, key=lambda i: (i.label, i.path))


def stratified_share(items: List[Item], share: float, seed: int) -> List[Item]:
    """`share` of each class's `items`, drawn at random with `seed` (the same draw every run)."""
    by_class: Dict[str, List[Item]] = defaultdict(list)
    for item in items:
        by_class[item.label].append(item)
    rng = random.Random(seed)
    return [item for label in sorted(by_class)
            for item in rng.sample(sorted(by_class[label], key=lambda i: i.path), round(share * len(by_class[label])))]


def save_set(path: Path, manifest: Manifest, items: List[Item], spec: PreprocessSpec) -> None:
    path.write_text(json.dumps({"classes": manifest.classes, "preprocess": json.loads(spec.to_json()),
                                "files": [str(manifest.absolute(i)) for i in items]}, indent=1))


def load_set(path: Path, model: ModelInfo) -> List[Path]:
    """Files of a saved set, after checking it was prepared the way the model expects."""
    data = json.loads(Path(path).read_text())
    if list(data["classes"]) != list(model.classes):
        raise DataError(f"{path}: calibration set classes {data['classes']} differ from the model's "
                        f"{list(model.classes)}; prepare the set with the model's config")
    spec = PreprocessSpec.from_json(json.dumps(data["preprocess"]))
    if spec != model.preprocess:
        raise DataError(f"{path}: calibration set preprocessing {spec} differs from the model's "
                        f"{model.preprocess}; prepare the set with the model's config")
    # Sets saved with a data_root list files relative to it; others list them whole.
    return [Path(data.get("data_root", "")) / f for f in data["files"]]


def preprocess_files(files: List[Path], spec: PreprocessSpec, progress: bool = True) -> List[np.ndarray]:
    from tqdm import tqdm

    pre = Preprocessor(spec)
    batches = []
    for path in tqdm(files, desc="calibration images", unit="img", disable=not progress):
        batches.append(pre.new_input())
        pre(read_image(path), batches[-1])
    return batches


class CalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed batch-1 inputs."""

    def __init__(self, input_name: str, batches: List[np.ndarray]):
        self.input_name, self.batches = input_name, batches
        self._iter = iter(batches)

    def get_next(self):
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}
