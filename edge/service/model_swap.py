"""Swapping the line's model while the belt runs, and going back.

A request (SIGHUP: the configured model again; the operator page: a file in models.dir, or
rollback) is prepared on a thread of its own: the new model is opened with the line's runtime
settings, its metadata checked (classes = the line's bins, preprocessing, input shape; a
TensorRT engine built for another GPU or TensorRT fails to open and says so) and a canary set
classified by it and by the running model, each single-threaded, in a low-priority child
process (edge.service.aside: never holding the loop's GIL). Only a model that passes is
staged; the sorting loop takes it between two items, so no item is dropped or decided twice,
and closes the old one. Anything that fails leaves the
running model in place and says why (log, audit event, /api/model).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from edge.config import Config
from edge.errors import ImageError, ScrapsortError
from edge.service.aside import run_aside
from edge.service.wiring import runtime_options
from edge.vision.backends import Backend, ModelInfo, open_backend, open_side_instance
from edge.vision.dataset import MANIFEST_NAME, Manifest
from edge.vision.images import IMAGE_SUFFIXES, read_image
from edge.vision.predict import Classifier
from edge.vision.preprocess import Preprocessor

log = logging.getLogger(__name__)
CANARY_TIMEOUT_S = 600.0  # two models on the canary images, one thread each, at low priority


class SwapBusy(ScrapsortError):
    """A swap is being prepared already."""


class SwapRefused(ScrapsortError):
    """The new model failed a check; the running one stays."""


@dataclass
class Staged:
    backend: Backend
    pre: Preprocessor
    reason: str
    checks: Dict


def check_metadata(config: Config, backend: Backend) -> Preprocessor:
    """What must hold for a model to take over this line's bins and buffers (its input shape
    against its preprocessing was checked when the backend opened it)."""
    info = backend.info
    if list(info.classes) != list(config.classes):
        raise SwapRefused(f"{info.path}: classes {list(info.classes)} differ from the line's {list(config.classes)} "
                          f"(bins and ejectors are mapped by class); export the model with the line's classes")
    try:
        return Preprocessor(info.preprocess)
    except ValueError as exc:
        raise SwapRefused(f"{info.path}: {exc}") from None


def canary_images(config: Config) -> List[Tuple[Path, str]]:
    """(image, label): models.canary's class folders, else the run's frozen test set or test split."""
    cfg = config.models
    if cfg.canary_images == 0:
        return []
    if cfg.canary:
        root = Path(cfg.canary)
        found = [(p, label) for label in config.classes for p in sorted((root / label).glob("*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES]
    elif (config.run_path / MANIFEST_NAME).is_file():
        manifest = Manifest.load(config.run_path / MANIFEST_NAME)
        found = [(manifest.absolute(i), i.label) for i in manifest.split("test")]
    else:
        found = []
    random.Random(0).shuffle(found)
    return found[:cfg.canary_images]


def _answers(path: Path, images: List[Tuple[Path, np.ndarray]], flip_average: bool) -> List[Optional[int]]:
    """Top-1 index per image from a single-threaded instance; None where the output is not finite."""
    with open_side_instance(path, flip_average) as backend:
        classifier = Classifier(backend)
        answers = []
        for _, image in images:
            logits = classifier.logits(image)
            answers.append(int(np.argmax(logits)) if np.all(np.isfinite(logits)) else None)
    return answers


def run_canary(config: Config, candidate: Path, running: Path) -> Dict:
    images, labels = [], []
    for path, label in canary_images(config):
        try:
            images.append((path, read_image(path)))
            labels.append(config.classes.index(label))
        except ImageError as exc:
            log.warning("canary image skipped: %s", exc)
    if not images:
        return {"images": 0}
    flip = config.runtime.flip_average
    new, old = _answers(candidate, images, flip), _answers(running, images, flip)
    result = {"images": len(images),
              "agreement": float(np.mean([a is not None and a == b for a, b in zip(new, old)])),
              "accuracy": float(np.mean([a == y for a, y in zip(new, labels)])),
              "running_accuracy": float(np.mean([b == y for b, y in zip(old, labels)])),
              "invalid_outputs": sum(a is None for a in new)}
    cfg = config.models
    if result["invalid_outputs"]:
        raise SwapRefused(f"{candidate}: NaN/Inf outputs on {result['invalid_outputs']} canary image(s)")
    if result["agreement"] < cfg.min_agreement:
        raise SwapRefused(f"{candidate}: agrees with the running model on {result['agreement']:.1%} of "
                          f"{len(images)} canary images (models.min_agreement {cfg.min_agreement:.0%})")
    if result["accuracy"] < cfg.min_accuracy:
        raise SwapRefused(f"{candidate}: {result['accuracy']:.1%} right on {len(images)} canary images "
                          f"(models.min_accuracy {cfg.min_accuracy:.0%})")
    return result


class ModelSwapper:
    """Prepares swaps off the loop; the loop calls take() between items."""

    def __init__(self, config: Config, running: Callable[[], ModelInfo], on_event: Callable[[str, Dict], None]):
        self.config, self._running, self._event = config, running, on_event
        self.previous: Optional[str] = None  # the model before the last swap: what rollback loads
        self.last: Dict = {}                 # the last request's outcome, for /api/model
        self._staged: Optional[Staged] = None
        self._busy = False  # from a request to its outcome in `last`, set together under the lock
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @property
    def busy(self) -> bool:
        return self._busy

    def _outcome(self, fields: Dict) -> None:
        with self._lock:
            self.last = {**self.last, **fields}
            self._busy = False

    def allowed(self, name: str) -> Path:
        """A file the page may ask for: inside models.dir (default the run dir), nothing else."""
        folder = Path(self.config.models.dir or self.config.run_path).resolve()
        path = (folder / name).resolve()
        if folder not in path.parents or path.suffix.lower() not in (".onnx", ".engine", ".plan") or not path.is_file():
            raise KeyError(f"{name}: no model file of that name in {folder}")
        return path

    def request(self, path: Path, reason: str) -> None:
        with self._lock:
            if self.busy:
                raise SwapBusy("a model swap is being prepared; wait for its outcome (GET /api/model)")
            self.last = {"state": "checking", "path": str(path), "reason": reason, "t_wall": time.time()}
            self._busy = True
            self._thread = threading.Thread(target=self._prepare, args=(Path(path), reason), name="model-swap",
                                            daemon=True)
            self._thread.start()

    def rollback(self) -> None:
        if self.previous is None:
            raise SwapRefused("nothing to roll back to: the line has run one model since it started")
        self.request(Path(self.previous), "rollback")

    def _prepare(self, path: Path, reason: str) -> None:
        running = self._running()
        backend = None
        try:
            if not path.is_file():
                raise SwapRefused(f"{path}: model file not found")
            backend = open_backend(path, **runtime_options(self.config, path))
            pre = check_metadata(self.config, backend)
            if backend.info.sha256 == running.sha256:
                raise SwapRefused(f"{path}: the running model already (sha256 {running.sha256[:12]})")
            checks = run_aside(run_canary, self.config, path, Path(running.path), timeout=CANARY_TIMEOUT_S)
        except Exception as exc:  # any failure keeps the running model: say why, never raise on the line
            if backend is not None:
                backend.close()
            message = str(exc) if isinstance(exc, ScrapsortError) else f"{path}: {type(exc).__name__}: {exc}"
            self._outcome({"state": "refused", "error": message})
            self._event("model_swap_refused", {"path": str(path), "reason": reason, "error": message})
            log.error("model swap refused, %s keeps sorting: %s", running.label, message)
            return
        with self._lock:
            self._staged = Staged(backend, pre, reason, checks)
            self.last = {**self.last, "state": "staged", "canary": checks}

    def take(self) -> Optional[Staged]:
        """The staged model, once (the loop swaps it in between two items)."""
        with self._lock:
            staged, self._staged = self._staged, None
            return staged

    def swapped(self, old: ModelInfo, new: ModelInfo, staged: Staged) -> None:
        self.previous = old.path
        self._outcome({"state": "running", "from": old.label, "to": new.label})
        self._event("model_swapped", {"from": old.label, "to": new.label, "path": new.path, "reason": staged.reason,
                                      "canary": staged.checks})
        log.info("model swapped (%s): %s -> %s", staged.reason, old.label, new.label)

    def available(self) -> List[str]:
        """Model files the page may swap to (models.dir)."""
        folder = Path(self.config.models.dir or self.config.run_path)
        return sorted(p.name for p in folder.glob("*") if p.suffix.lower() in (".onnx", ".engine", ".plan")) \
            if folder.is_dir() else []

    def status(self) -> Dict:
        info = self._running()
        return {"running": {"path": info.path, "sha256": info.sha256, "version": info.version, "label": info.label,
                            "precision": info.precision},
                "previous": self.previous, "last_request": self.last, "available": self.available()}

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
        staged = self.take()
        if staged is not None:
            staged.backend.close()
