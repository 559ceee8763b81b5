"""The line's counters, kept once: /metrics renders them (prometheus_client), and the run
summary and the operator page read the same objects, so the three never disagree.

Totals are counters for the life of the process. Percentiles shown on the page and in the
summary come from a bounded window of recent latencies (the daemon runs for months).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Deque, Dict, List, Optional

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics, generate_latest)

from edge.line.decision import REJECT_REASONS
from edge.service.history import History
from edge.stats import percentiles

STAGES = ("frame_age", "preprocess", "inference", "postprocess", "capture_to_decision")
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # *_created series: noise for a line's dashboards


class Telemetry:
    def __init__(self, window: int = 20000):
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)

        def counter(name: str, text: str, labels=()) -> Counter:
            return Counter(name, text, labels, namespace="scrapsort", registry=self.registry)

        self.frames = counter("frames", "camera frames received")
        self.items = counter("items", "items classified, by class", ["class"])
        self.rejects = counter("rejects", "items below the confidence threshold (reject bin)")
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
        self.history = History()
        self._lock = threading.Lock()
        self.recent: Deque[dict] = deque(maxlen=window)  # recent decisions, for the page and the demo's truth check
        self._latency: Dict[str, Deque[float]] = {stage: deque(maxlen=window) for stage in STAGES}

    # -- recording -----------------------------------------------------------------------
    def decision(self, row: dict, latency_s: Dict[str, float]) -> None:
        self.items.labels(row["class"]).inc()
        if row["reason"] == "low_confidence":
            self.rejects.inc()
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
        return {s.labels[label]: int(s.value) for m in metric.collect() for s in m.samples if s.name.endswith("_total")}

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
