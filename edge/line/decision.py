"""Class + confidence -> bin, with the operator's overrides."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from edge.config import Config
from edge.vision.scoring import ranked


INVALID = "invalid"  # the label of an item whose model output was NaN/Inf: no class was decided
REJECT_REASONS = ("low_confidence", "invalid_output")  # why an item goes to the reject bin (capture kept)


@dataclass(frozen=True)
class Decision:
    label: str
    confidence: float
    top: List[dict]
    bin: Optional[str]       # None: no ejection (sorting paused)
    reason: str              # class | low_confidence | invalid_output | forced | paused


class Controls:
    """Operator overrides, safe to change from another thread (web view, signals)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.paused = False
        self.forced_bin: Optional[str] = None

    def pause(self, paused: bool = True) -> None:
        with self._lock:
            self.paused = paused

    def force(self, bin_name: Optional[str]) -> None:
        with self._lock:
            self.forced_bin = bin_name

    def state(self):
        with self._lock:
            return self.paused, self.forced_bin


class Decider:
    def __init__(self, config: Config, classes: Sequence[str], controls: Controls):
        self.config, self.classes, self.controls = config, list(classes), controls
        self.bins = sorted({config.decision.bin_of(c) for c in classes} | {config.decision.reject_bin})

    def decide(self, logits: np.ndarray) -> Decision:
        valid = bool(np.all(np.isfinite(logits)))  # NaN never compares below a threshold: check it first
        top = ranked(logits, self.classes, 3) if valid else []
        label, confidence = (top[0]["class"], top[0]["confidence"]) if valid else (INVALID, 0.0)
        paused, forced = self.controls.state()
        if paused:
            return Decision(label, confidence, top, None, "paused")
        if forced is not None:
            return Decision(label, confidence, top, forced, "forced")
        if not valid:
            return Decision(label, confidence, top, self.config.decision.reject_bin, "invalid_output")
        if confidence < self.config.decision.threshold:
            return Decision(label, confidence, top, self.config.decision.reject_bin, "low_confidence")
        return Decision(label, confidence, top, self.config.decision.bin_of(label), "class")
