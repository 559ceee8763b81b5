"""The line's counters, kept once: /metrics renders them (prometheus_client), and the run
summary and the operator page read the same objects, so the three never disagree.

Totals are counters for the life of the process. Percentiles shown on the page and in the
summary come from a bounded window of recent latencies (the daemon runs for months).
"""
from __future__ import annotations

import shutil
import threading
from collections import deque
from pathlib import Path
from typing import Deque, Dict, List, Optional

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest)

from edge.line.decision import REJECT_REASONS
from edge.service.history import History
from edge.stats import percentiles

STAGES = ("frame_age", "preprocess", "inference", "postprocess", "capture_to_decision")
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # *_created series: noise for a line's dashboards


def _free_bytes(folder: Path) -> float:
    try:
        return float(shutil.disk_usage(folder).free)
    except OSError:
        return float("nan")  # the folder is gone: the alert on it says so


class Telemetry:
    def __init__(self, window: int = 20000):
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)

        def counter(name: str, text: str, labels=()) -> Counter:
            return Counter(name, text, labels, namespace="scrapsort", registry=self.registry)

        self.frames = counter("frames", "camera frames received")
        self.items = counter("items", "items classified, by class and the model that decided", ["class", "model"])
        self.rejects = counter("rejects", "items below the confidence threshold (reject bin), by model", ["model"])
        self.invalid_outputs = counter("invalid_outputs", "items whose model output was NaN/Inf (reject bin)")
        self.stale = counter("stale_frames", "observations skipped as older than line.max_frame_age_ms")
        self.dropped = counter("dropped_items", "observations dropped because inference fell behind")
        self.entered = counter("items_entered", "items that entered the camera's view: each ends decided or "
                                                "unclassified")
        self.unclassified = counter("unclassified_items", "items that entered the view and left it undecided, "
                                                          "by reason", ["reason"])
        self.late = counter("late_ejections", "ejections not fired because their moment had passed")
        self.beside_bank = counter("ejections_beside_bank", "ejections not fired: the item lay beside every valve "
                                                            "of its bank")
        self.suppressed = counter("suppressed_ejections", "ejections not fired because an actuator link was down")
        self.ejections = counter("ejections", "pulses fired, by output (each valve of a bank counts)", ["output"])
        self.ejected = counter("ejected_items", "items whose ejection fired (once per item, however many valves)")
        self.actuator_errors = counter("actuator_errors", "failed actuator commands")
        self.link_faults = counter("link_faults", "times an actuator link (PLC, broker) was lost")
        self.camera_faults = counter("camera_faults", "times the camera stopped delivering good frames "
                                                      "(gone, frozen, another resolution)")
        self.captures_paused = Gauge("captures_paused", "1 while review captures are paused (disk below its "
                                     "reserve, or unwritable): decisions are still logged",
                                     namespace="scrapsort", registry=self.registry)
        self.frame_age = Gauge("frame_age_seconds", "age of the last observation when inference started",
                               namespace="scrapsort", registry=self.registry)
        self.stage_latency = Histogram("stage_latency_seconds", "per-stage latency", ["stage"], namespace="scrapsort",
                                       registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.ejection_error = Histogram("ejection_error_seconds", "|fired - exact crossing time| of each pulse",
                                        namespace="scrapsort", registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.link_up = Gauge("actuator_link_up", "1 while the link to an actuator (PLC, broker, GPIO) is up",
                             ["actuator"], namespace="scrapsort", registry=self.registry)
        # Drift: how sure the model is, per model; Prometheus windows it (configs/prometheus/).
        self.confidence = Histogram("top1_confidence", "top-1 softmax confidence of each decided item", ["model"],
                                    namespace="scrapsort", registry=self.registry, buckets=CONFIDENCE_BUCKETS)
        self.model_info = Gauge("model_info", "1 for the model now sorting (its version and short sha256)",
                                ["model", "version", "sha256", "precision"], namespace="scrapsort", registry=self.registry)
        self.disk_free = Gauge("disk_free_bytes", "free space where the audit log and captures are written",
                               ["path"], namespace="scrapsort", registry=self.registry)
        self.shadow_items = counter("shadow_items", "crops the shadow model classified, by the live class and "
                                                    "whether it agreed", ["class", "agrees"])
        self.shadow_dropped = counter("shadow_dropped", "crops the shadow model skipped because it was behind")
        self.shadow_info = Gauge("shadow_model_info", "1 for the model running in shadow", ["model", "version"],
                                 namespace="scrapsort", registry=self.registry)
        self.model_label = ""
        self.history = History()
        self._lock = threading.Lock()
        self.recent: Deque[dict] = deque(maxlen=window)  # recent decisions, for the page and the demo's truth check
        self._latency: Dict[str, Deque[float]] = {stage: deque(maxlen=window) for stage in STAGES}

    # -- recording -----------------------------------------------------------------------
    def set_model(self, info) -> None:
        """The running model, as every decision metric's `model` label names it."""
        self.model_info.clear()
        self.model_label = info.sha256[:12]
        self.model_info.labels(self.model_label, info.version_name, info.sha256, info.precision).set(1)

    def shadow_model(self, info) -> None:
        self.shadow_info.labels(info.sha256[:12], info.version_name).set(1)

    def shadow_summary(self) -> Dict:
        """What the shadow model did: crops classified, how many agreed with the live model
        (overall and per live class), how many it skipped while behind."""
        counts: Dict[str, Dict[str, int]] = {}
        for m in self.shadow_items.collect():
            for s in m.samples:
                if s.name.endswith("_total"):
                    counts.setdefault(s.labels["class"], {})[s.labels["agrees"]] = int(s.value)
        items = sum(sum(c.values()) for c in counts.values())
        agreed = sum(c.get("yes", 0) for c in counts.values())
        return {"items": items, "agreed": agreed, "agreement": agreed / items if items else 0.0,
                "per_class": {label: c.get("yes", 0) / max(1, sum(c.values())) for label, c in counts.items()},
                "dropped": self.total(self.shadow_dropped)}

    def watch_disk(self, folders: Dict[str, Path]) -> None:
        """Free bytes per folder, read when scraped (a full disk stops captures, then the audit log)."""
        for name, folder in folders.items():
            self.disk_free.labels(name).set_function(lambda folder=folder: _free_bytes(folder))

    def decision(self, row: dict, latency_s: Dict[str, float]) -> None:
        model = (row.get("model_sha256") or self.model_label)[:12]
        self.items.labels(row["class"], model).inc()
        if row["confidence"] == row["confidence"]:  # NaN (an invalid output) has no place in a histogram
            self.confidence.labels(model).observe(row["confidence"])
        if row["reason"] == "low_confidence":
            self.rejects.labels(model).inc()
        elif row["reason"] == "invalid_output":
            self.invalid_outputs.inc()
        for stage, seconds in latency_s.items():
            self.stage_latency.labels(stage).observe(seconds)
        self.frame_age.set(latency_s["frame_age"])
        self.history.decision(row["class"], row["confidence"], row["reason"] in REJECT_REASONS, latency_s)
        with self._lock:
            self.recent.append(row)
            for stage, seconds in latency_s.items():
                self._latency[stage].append(seconds)

    def link(self, actuator: str, healthy: bool) -> None:
        self.link_up.labels(actuator).set(1 if healthy else 0)
        self.history.link(actuator, healthy)

    def pulse(self, fired) -> None:
        self.ejected.inc()
        for output in fired.outputs:
            self.ejections.labels(str(output)).inc()
        self.ejection_error.observe(abs(fired.error_s))

    # -- reading -------------------------------------------------------------------------
    def total(self, metric: Counter) -> int:
        """A counter's total over all its labels."""
        return int(sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total")))

    def per_class(self) -> Dict[str, int]:
        return self.by_label(self.items, "class")

    @staticmethod
    def by_label(metric: Counter, label: str) -> Dict[str, int]:
        """Totals per value of one label, summed over the others (e.g. per class over models)."""
        totals: Dict[str, int] = {}
        for m in metric.collect():
            for s in m.samples:
                if s.name.endswith("_total"):
                    totals[s.labels[label]] = totals.get(s.labels[label], 0) + int(s.value)
        return totals

    @property
    def decisions(self) -> int:
        return self.total(self.items)

    def latency_ms(self, last: int = 0) -> Dict[str, Dict[str, float]]:
        """Percentiles per stage over the recent window (or its `last` entries)."""
        with self._lock:
            return {stage: percentiles(list(values)[-last:] if last else list(values))
                    for stage, values in self._latency.items()}

    def last_decision(self) -> Optional[dict]:
        with self._lock:
            return self.recent[-1] if self.recent else None

    def recent_decisions(self) -> List[dict]:
        with self._lock:
            return list(self.recent)

    def render(self) -> bytes:
        return generate_latest(self.registry)
