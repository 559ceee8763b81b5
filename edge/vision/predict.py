"""Classify image files with any model the project produces (`scrapsort predict`)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Iterator, List

import numpy as np

from edge.vision.backends import Backend, open_backend
from edge.errors import ImageError
from edge.vision.images import IMAGE_SUFFIXES, read_image
from edge.vision.scoring import ranked
from edge.vision.preprocess import Preprocessor


class Classifier:
    """Backend + shared preprocessing: image in, class / confidence / top-k out."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.classes = backend.info.classes
        self.pre = Preprocessor(backend.info.preprocess)

    def logits(self, bgr: np.ndarray) -> np.ndarray:
        self.pre(bgr, self.backend.input)
        return self.backend.infer()

    def classify(self, bgr: np.ndarray, top: int = 3) -> Dict:
        best = ranked(self.logits(bgr), self.classes, top)
        return {"class": best[0]["class"], "confidence": best[0]["confidence"], "top": best}


def expand(paths: Iterable[str]) -> Iterator[Path]:
    """Files as given; folders recursively, image files only, in a stable order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def predict_paths(model: str, paths: Iterable[str], top: int = 3) -> List[Dict]:
    """One record per file: path, class, confidence, top-k; or path and error. Never stops early."""
    with open_backend(model) as backend:
        classifier = Classifier(backend)
        records = []
        for path in expand(paths):
            try:
                records.append({"path": str(path), **classifier.classify(read_image(path), top)})
            except ImageError as exc:
                records.append({"path": str(path), "error": str(exc)})
        return records
