"""`scrapsort evaluate`: any model the project produces, on a split of the manifest.

Runs batch 1 through the same backend interface and preprocessing as the edge loop, so
the numbers are those the belt will see. Writes metrics JSON, a confusion matrix PNG and,
for the training run, the loss/accuracy curves.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from edge.backends import open_backend
from edge.config import Config
from edge.errors import ImageError, ModelError
from edge.images import read_image
from edge.metrics import classification_report
from edge.predict import Classifier
from train.prepare import MANIFEST_NAME, Manifest

log = logging.getLogger(__name__)


def predict_split(model_path: Path, manifest: Manifest, split: str, progress: bool = True
                  ) -> Tuple[np.ndarray, List[int], Dict]:
    """(logits NxC, true label indices, backend description) for every readable image of a split."""
    items = manifest.split(split)
    if not items:
        raise ModelError(f"split '{split}' is empty in the manifest; re-run `scrapsort prepare`")
    with open_backend(model_path) as backend:
        if list(backend.info.classes) != list(manifest.classes):
            raise ModelError(f"{model_path}: model classes {list(backend.info.classes)} differ from the "
                             f"manifest's {manifest.classes}; evaluate with the matching config")
        classifier = Classifier(backend)
        logits, labels = [], []
        for item in tqdm(items, desc=f"evaluating {Path(model_path).name}", unit="img", disable=not progress):
            try:
                logits.append(classifier.logits(read_image(manifest.absolute(item))).copy())
            except ImageError as exc:
                log.warning("skipped: %s", exc)
                continue
            labels.append(manifest.classes.index(item.label))
        about = {"backend": backend.name, "precision": backend.info.precision, "sha256": backend.info.sha256}
    return np.stack(logits), labels, about


def evaluate(config: Config, model_path: Optional[str] = None, split: str = "test", progress: bool = True) -> Dict:
    from train.plots import plot_confusion_matrix, plot_history

    run_dir = config.run_path
    default = model_path is None
    model = Path(model_path) if model_path else run_dir / "best.pt"
    manifest = Manifest.load(run_dir / MANIFEST_NAME)
    logits, labels, about = predict_split(model, manifest, split, progress)
    metrics = classification_report(labels, logits.argmax(1).tolist(), manifest.classes)
    metrics.update({"model": str(model), "split": split, **about})

    suffix = "" if default else f"-{model.stem}"
    outputs = [run_dir / f"metrics{suffix}.json", run_dir / f"confusion_matrix{suffix}.png"]
    plot_confusion_matrix(metrics["confusion_matrix"], manifest.classes,
                          f"{model.name} on {split}: accuracy {metrics['accuracy']:.3f} (n={metrics['count']})",
                          outputs[1])
    history = run_dir / "history.json"
    if default and history.is_file():
        outputs.append(run_dir / "training_history.png")
        plot_history(json.loads(history.read_text()), outputs[-1])
    metrics["outputs"] = [str(p) for p in outputs]
    outputs[0].write_text(json.dumps(metrics, indent=1))
    return metrics
