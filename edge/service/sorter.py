"""The sorting loop: frames -> items -> batch-1 inference -> decision -> belt-timed pulse.

Threads: capture (newest frame only, trigger on every frame), this loop (inference and
decisions), the ejection scheduler, the audit writer and the status endpoint. The loop is
the only one that pings the systemd watchdog, and only while frames arrive.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from edge.plant.base import Actuator, open_actuators
from edge.service.audit import AuditLog
from edge.vision.backends import open_backend
from edge.line.belt import BeltTracker
from edge.config import Config
from edge.line.decision import Controls, Decider
from edge.line.ejector import EjectionScheduler, Fired
from edge.errors import ConfigError
from edge.service.sdnotify import Notifier
from edge.line.sources import CaptureThread, Frame, open_source
from edge.service.telemetry import STAGES, Metrics, StatusServer
from edge.line.trigger import Observation, PhotoEyeTrigger, VisionTrigger

log = logging.getLogger(__name__)
QUEUE_LENGTH = 8   # observations waiting for inference; the oldest is dropped beyond this
HISTORY = 20000    # recent decisions and latencies kept in memory for summaries and the web view


class Sorter:
    def __init__(self, config: Config, simulator=None, actuators: Optional[Sequence[Actuator]] = None):
        self.config, self.simulator = config, simulator
        if config.web.port:  # an exposed page without a token is refused before anything opens
            from edge.service.web import load_token

            load_token(config)
        self.metrics = _described_metrics()
        self.backend = self._open_model()
        self.model = self.backend.info
        from edge.vision.preprocess import Preprocessor

        self.pre = Preprocessor(self.model.preprocess)
        self.controls = Controls()
        self.decider = Decider(config, self.model.classes, self.controls)
        self.belt = BeltTracker(config.line, self._encoder_input())
        self.trigger = self._make_trigger()
        self.actuators = list(actuators) if actuators is not None else open_actuators(
            config.actuators, config.decision.max_pulse_ms / 1000)
        self.all_off()  # known state before anything can fire
        self.ejectors = {e.bin: e for e in config.decision.ejectors}
        self.scheduler = EjectionScheduler(self.belt, self.actuators, self._on_fired)
        self.audit = AuditLog(config.audit, config.run_path, self.model.sha256)
        self.source = open_source(config, simulator)
        self.capture = CaptureThread(self.source, config.source, self._on_frame,
                                     encoder=self.belt.encoder)
        self._queue: deque = deque()
        self._queue_cv = threading.Condition()
        # Bounded: the daemon runs for months. Totals live in counts and the metrics.
        self.decisions: deque = deque(maxlen=HISTORY)
        self.latency: Dict[str, deque] = defaultdict(lambda: deque(maxlen=HISTORY))
        self.counts = defaultdict(int)
        self.class_counts = defaultdict(int)
        self.notifier = Notifier()
        self.status = None
        if config.observability.port:
            self.status = StatusServer(config.observability.bind, config.observability.port, self.metrics, self.health)
        self.web = None
        if config.web.port:
            from edge.service.web import OperatorWeb

            self.web = OperatorWeb(self, config)
        self.started = False
        self._links_ok = True
        self._jitter = config.simulator.processing_jitter_ms if simulator is not None else ()

    # -- start-up ------------------------------------------------------------------------
    def _open_model(self):
        runtime = self.config.runtime
        path = Path(runtime.model) if runtime.model else self.config.run_path / "model.onnx"
        options = {"providers": runtime.providers, "threads": runtime.threads} if path.suffix == ".onnx" else {}
        backend = open_backend(path, **options)
        if list(backend.info.classes) != list(self.config.classes):
            backend.close()
            raise ConfigError(f"{self.config.source_file}: 'classes' {list(self.config.classes)} do not match the "
                              f"model {path} ({list(backend.info.classes)}); fix the config or the model")
        return backend

    def _encoder_input(self):
        if not self.config.line.encoder:
            return None
        if self.simulator is None:
            raise ConfigError(f"{self.config.source_file}: 'line.encoder' is on, but only the simulated conveyor "
                              f"provides an encoder input here; set line.encoder: false and belt_speed_mm_s")
        return self.simulator.encoder_count

    def _make_trigger(self):
        if self.config.trigger.type == "vision":
            return VisionTrigger(self.config, self.belt)
        if self.simulator is None:
            raise ConfigError(f"{self.config.source_file}: 'trigger.type: photo_eye' needs a photo-eye input; "
                              f"only the simulated conveyor provides one here")
        return PhotoEyeTrigger(self.config, self.belt, self.simulator.photo_eye)

    def start(self) -> None:
        self.audit.start()
        self.scheduler.start()
        if self.simulator is not None:
            self.simulator.start()
        self.capture.start()
        if self.status:
            self.status.start()
        if self.web:
            self.web.start()
        self.started = True
        self.audit.event("start", {"model": self.model.path, "sha256": self.model.sha256})
        self.notifier.ready(f"sorting with {Path(self.model.path).name}")

    # -- capture thread side ---------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        self.metrics.inc("frames_total")
        for obs in self.trigger.observe(frame):
            with self._queue_cv:
                if len(self._queue) >= QUEUE_LENGTH:
                    dropped = self._queue.popleft()
                    self.counts["dropped"] += 1
                    self.metrics.inc("dropped_items_total")
                    log.warning("inference behind: item %s dropped", dropped.item_id)
                self._queue.append(obs)
                self._queue_cv.notify()

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        last_ping, last_frames = 0.0, -1
        interval = self.notifier.watchdog_interval or 1.0
        while not stop.is_set():
            obs = self._next(timeout=0.05)
            if obs is not None:
                self.process(obs)
            now = time.monotonic()
            if self.capture.frames != last_frames and now - last_ping >= interval:
                self.notifier.watchdog()  # only from here, only while frames keep coming
                last_ping, last_frames = now, self.capture.frames
            self._watch_links()
            if self.capture.ended.is_set() and not self._queue and self.scheduler.pending() == 0:
                break

    def _watch_links(self) -> None:
        """A lost actuator link (PLC, broker) means: nothing pending survives, everything off."""
        healthy = all(a.healthy() for a in self.actuators)
        if not healthy and self._links_ok:
            dropped = self.scheduler.clear()
            self.all_off()
            self.metrics.inc("link_faults_total")
            self.audit.event("link_lost", {"dropped_ejections": dropped,
                                           "actuators": [a.name for a in self.actuators if not a.healthy()]})
            log.error("actuator link lost: %d pending ejection(s) dropped, outputs off, not ready", dropped)
        elif healthy and not self._links_ok:
            self.audit.event("link_restored", {})
            log.info("actuator links restored")
        self._links_ok = healthy

    def run_to_end(self, stop: Optional[threading.Event] = None) -> "Sorter":
        """start, sort until stopped or the source ends, shut down (outputs off) on every way out."""
        self.start()
        try:
            self.run(stop or threading.Event())
        finally:
            self.shutdown()
        return self

    def _next(self, timeout: float) -> Optional[Observation]:
        with self._queue_cv:
            if not self._queue:
                self._queue_cv.wait(timeout)
            return self._queue.popleft() if self._queue else None

    def process(self, obs: Observation) -> Optional[Dict]:
        started = time.monotonic()
        max_age = self.config.line.max_frame_age_ms / 1000
        if started - obs.t_capture > max_age:
            return self._stale(obs, started)
        self.pre(obs.crop, self.backend.input)
        t_pre = time.monotonic()
        logits = self.backend.infer()
        t_inf = time.monotonic()
        if self._jitter:  # simulated slow inference (tests/demo of the timing guarantees)
            time.sleep(random.uniform(*self._jitter) / 1000)
        decision = self.decider.decide(logits)
        t_dec = time.monotonic()
        if t_dec - obs.t_capture > max_age:  # went stale while being processed: never act on it
            return self._stale(obs, t_dec)
        target = self._schedule(obs, decision)
        latency = {"frame_age": started - obs.t_capture, "preprocess": t_pre - started,
                   "inference": t_inf - t_pre, "postprocess": t_dec - t_inf,
                   "capture_to_decision": t_dec - obs.t_capture}
        row = {"item_id": obs.item_id, "t_wall": time.time(), "class": decision.label,
               "confidence": decision.confidence, "top3": decision.top, "bin": decision.bin,
               "reason": decision.reason, "x_mm": obs.x_mm, "belt_mm": obs.belt_mm, "eject_target_mm": target,
               "latency_ms": {k: round(v * 1000, 3) for k, v in latency.items()}}
        self.audit.record(row, obs.crop, decision.reason == "low_confidence")
        for actuator in self.actuators:
            try:
                actuator.decision(row)
            except Exception as exc:  # telemetry must never stop sorting
                log.error("%s: decision not published: %s", actuator.name, exc)
        self._account(row, latency, obs)
        return row

    def _schedule(self, obs: Observation, decision) -> Optional[float]:
        ejector = self.ejectors.get(decision.bin) if decision.bin else None
        if ejector is None:
            return None  # pass-through bin, or sorting paused
        if not self._links_ok:
            self.counts["suppressed"] += 1  # fail safe: no pulses while a link is down
            return None
        target = obs.belt_mm + (ejector.position_mm - obs.x_mm)
        if self.belt.seconds_until(target) * 1000 < self.config.line.min_lead_ms:
            self.counts["late"] += 1
            self.metrics.inc("late_ejections_total")
            log.warning("item %s: decided too late to reach the %s ejector; not fired", obs.item_id, decision.bin)
            return None
        self.scheduler.schedule(obs.item_id, ejector.output, target, self.config.decision.pulse_ms / 1000)
        return target

    def _stale(self, obs: Observation, now: float) -> None:
        self.counts["stale"] += 1
        self.metrics.inc("stale_frames_total")
        log.warning("item %s: frame %.0f ms old, skipped", obs.item_id, (now - obs.t_capture) * 1000)
        return None

    def _account(self, row: Dict, latency: Dict[str, float], obs: Observation) -> None:
        self.decisions.append({**row, "t_capture": obs.t_capture})
        self.counts["decisions"] += 1
        self.class_counts[row["class"]] += 1
        if row["reason"] == "low_confidence":
            self.counts["rejects"] += 1
        for stage, seconds in latency.items():
            self.latency[stage].append(seconds)
            self.metrics.observe("stage_latency_seconds", seconds, stage=stage)
        self.metrics.inc("items_total", **{"class": row["class"]})
        if row["reason"] == "low_confidence":
            self.metrics.inc("rejects_total")
        self.metrics.set("frame_age_seconds", latency["frame_age"])

    def _on_fired(self, fired: Fired) -> None:
        self.metrics.set("actuator_errors_total", self.scheduler.errors)
        self.metrics.inc("ejections_total", output=str(fired.output))
        self.metrics.observe("ejection_error_seconds", abs(fired.error_s))

    # -- state -----------------------------------------------------------------------------
    def health(self):
        age = time.monotonic() - self.capture.last_frame_at
        camera_ok = age < self.config.source.read_timeout_s and self.capture.failed_reopens < self.config.source.reopen_limit
        actuators_ok = all(a.healthy() for a in self.actuators)
        paused, forced = self.controls.state()
        details = {"ready": self.started and camera_ok and actuators_ok, "camera_ok": camera_ok,
                   "last_frame_age_s": round(age, 3), "camera_error": self.capture.error,
                   "actuators_ok": actuators_ok, "paused": paused, "forced_bin": forced,
                   "model": self.model.path, "precision": self.model.precision,
                   "captures": self.audit.captures.disabled_reason or "ok"}
        return details["ready"], details

    def all_off(self) -> None:
        for actuator in self.actuators:
            try:
                actuator.all_off()
            except Exception as exc:
                log.error("%s: all_off failed: %s", actuator.name, exc)

    def shutdown(self) -> None:
        """Outputs off first, then everything else; safe to call after any failure."""
        self.notifier.stopping()
        self.capture.stop()
        if hasattr(self.trigger, "close"):
            self.trigger.close()
        dropped = self.scheduler.clear()
        self.scheduler.stop()
        self.all_off()
        for actuator in self.actuators:
            actuator.close()
        if dropped:
            log.info("%d pending ejection(s) dropped at shutdown", dropped)
        self.audit.event("stop", {"pending_dropped": dropped})
        self.audit.close()
        if self.status:
            self.status.close()
        if self.web:
            self.web.close()
        self.capture.join(timeout=2)
        self.source.close()
        self.backend.close()


def _described_metrics() -> Metrics:
    metrics = Metrics()
    for name, kind, text in (
            ("frames_total", "counter", "camera frames received"),
            ("items_total", "counter", "items classified, by class"),
            ("rejects_total", "counter", "items below the confidence threshold (reject bin)"),
            ("stale_frames_total", "counter", "observations skipped as older than line.max_frame_age_ms"),
            ("dropped_items_total", "counter", "observations dropped because inference fell behind"),
            ("late_ejections_total", "counter", "decisions too late to reach their ejector (not fired)"),
            ("ejections_total", "counter", "pulses fired, by output"),
            ("actuator_errors_total", "counter", "failed actuator commands"),
            ("link_faults_total", "counter", "times an actuator link (PLC, broker) was lost"),
            ("frame_age_seconds", "gauge", "age of the last observation when inference started"),
            ("stage_latency_seconds", "histogram", "per-stage latency"),
            ("ejection_error_seconds", "histogram", "|fired - exact crossing time| of each pulse")):
        metrics.describe(name, kind, text)
    return metrics
