"""Shadow mode: a candidate model classifies the same crops as the live one, off the hot path.

The loop hands each decided crop over without waiting (a full queue drops it, counted); the
shadow thread passes it on, only while the loop has no item in hand, to the candidate in a
low-priority child process with one inference thread (edge.service.aside: a process, so that
it never holds the loop's GIL), so it never delays a decision or an ejection. Each answer and
whether it agreed with the live model go to the audit log's `shadow` table and to /metrics
(agreement per class). A candidate whose process dies stops shadowing; the line sorts on.
"""
from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from edge.config import Config
from edge.service.aside import SideModel
from edge.vision.scoring import softmax

log = logging.getLogger(__name__)


class ShadowModel(threading.Thread):
    def __init__(self, config: Config, telemetry, audit, line_idle: Callable[[float], None]):
        super().__init__(name="shadow", daemon=True)
        path = Path(config.models.shadow)
        self.model = SideModel(path, config.runtime.flip_average, name="shadow")
        if list(self.model.info.classes) != list(config.classes):
            classes = list(self.model.info.classes)
            self.model.close()
            raise ValueError(f"models.shadow {path}: classes {classes} differ from the line's {list(config.classes)}")
        self.telemetry, self.audit, self._line_idle = telemetry, audit, line_idle
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=config.models.shadow_queue)
        self._stopped = False
        telemetry.shadow_model(self.model.info)

    @property
    def info(self):
        return self.model.info

    def offer(self, row: Dict, crop: np.ndarray) -> None:
        """Never waits: when the shadow is behind or has stopped, the crop is dropped and counted."""
        if self._stopped:
            self.telemetry.shadow_dropped.inc()
            return
        try:
            self._queue.put_nowait((row, crop.copy()))
        except queue.Full:
            self.telemetry.shadow_dropped.inc()

    def run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            self._line_idle(1.0)  # the live model first
            try:
                self._classify(*entry)
            except Exception as exc:  # a failing candidate must not take anything else down
                self.telemetry.shadow_dropped.inc()
                log.error("shadow model failed on item %s: %s", entry[0]["item_id"], exc)
                if not self.model.alive:
                    log.error("shadow model stopped; crops offered from now on are dropped and counted")
                    self._stopped = True
                    self._drop_waiting()
                    return

    def _drop_waiting(self) -> None:
        """Crops still queued when shadowing stops count as dropped (the stop sentinel does not)."""
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not None:
                self.telemetry.shadow_dropped.inc()

    def _classify(self, row: Dict, crop: np.ndarray) -> None:
        logits = self.model.logits(crop)
        probs = softmax(np.asarray(logits, np.float64))
        index = int(np.argmax(probs))
        label, confidence = self.model.info.classes[index], float(probs[index])
        agrees = bool(np.all(np.isfinite(probs))) and label == row["class"]
        self.telemetry.shadow_items.labels(row["class"], "yes" if agrees else "no").inc()
        self.audit.shadow({"item_id": row["item_id"], "live_class": row["class"], "live_confidence": row["confidence"],
                           "class": label, "confidence": confidence, "agrees": agrees,
                           "model_sha256": self.model.info.sha256, "model_version": self.model.info.label})

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=1)
        except queue.Full:
            pass
        if self.ident is not None:
            self.join(timeout=5)
        self._drop_waiting()
        self.model.close()
