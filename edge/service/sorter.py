"""The sorting loop: frames -> items -> batch-1 inference -> decision -> belt-timed pulse.

Threads: capture (newest frame only, trigger on every frame; items it can predict at the
trigger line are handed over before the frame is searched), this loop (inference and
decisions), the ejection scheduler, the audit writer and the HTTP servers. The loop is the
only one that pings the systemd watchdog, and only while frames arrive. The parts come
from build_line(); the Sorter only runs them.
"""
from __future__ import annotations

import gc
import logging
import random
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from edge.config import Config
from edge.line.decision import REJECT_REASONS
from edge.line.ejector import EjectionScheduler, Fired
from edge.line.simulator import SimulatedConveyor
from edge.line.sources import CaptureThread, Frame
from edge.line.trigger import Observation
from edge.plant.base import Actuator, all_off
from edge.service.http import HttpServer, status_app
from edge.service.model_swap import ModelSwapper
from edge.service.shadow import ShadowModel
from edge.service.sdnotify import Notifier
from edge.service.wiring import Line, build_line, model_path

log = logging.getLogger(__name__)
QUEUE_LENGTH = 8   # observations waiting for inference; the oldest is dropped beyond this
GIL_SWITCH_S = 0.0005


class Sorter:
    def __init__(self, line: Line):
        self.line, self.config = line, line.config
        self.telemetry, self.audit, self.controls = line.telemetry, line.audit, line.controls
        self.decider = line.decider
        self.actuators, self.ejectors, self.belt = line.actuators, line.ejectors, line.belt
        self.scheduler = EjectionScheduler(line.belt, line.actuators, self._on_fired, self._on_late,
                                           self._on_pulse_error)
        self.capture = CaptureThread(line.source, self.config.source, self._on_frame, encoder=line.belt.encoder)
        self._queue: deque = deque()
        self._queue_cv = threading.Condition()
        self._busy = False   # an observation is being processed
        self.notifier = Notifier()
        self.swapper = ModelSwapper(self.config, lambda: self.line.model, self.audit.event)
        self.reload_requested = threading.Event()  # SIGHUP
        self.shadow = self._open_shadow()
        self.telemetry.set_model(self.model)
        self.telemetry.watch_disk({"audit": self.audit.path.parent, "captures": self.audit.captures.folder})
        self.status: Optional[HttpServer] = None
        self.web: Optional[HttpServer] = None
        self.operator = None
        self._open_http()
        self.started = self._ready_sent = False
        self._links_ok = self._camera_was_ok = True
        self._link_state: Dict[int, bool] = {}
        self._captures_reason: Optional[str] = None

    def _open_shadow(self) -> Optional[ShadowModel]:
        """The candidate in shadow, if configured; one that cannot run is reported, never fatal."""
        if not self.config.models.shadow:
            return None
        try:
            return ShadowModel(self.config, self.telemetry, self.audit, self._wait_idle)
        except Exception as exc:
            self.audit.event("shadow_refused", {"path": self.config.models.shadow, "error": str(exc)})
            log.error("shadow model not started, the line sorts without it: %s", exc)
            return None

    @property
    def backend(self):
        return self.line.backend

    @property
    def model(self):
        return self.line.model

    @classmethod
    def from_config(cls, config: Config, simulator: Optional[SimulatedConveyor] = None,
                    actuators: Optional[Sequence[Actuator]] = None) -> "Sorter":
        if config.web.port:  # an exposed page without a token is refused before anything opens
            from edge.service.web import load_token

            load_token(config)
        return cls(build_line(config, simulator, actuators))

    def _open_http(self) -> None:
        observability, web = self.config.observability, self.config.web
        if observability.port:
            self.status = HttpServer(status_app(self.telemetry, self.health), observability.bind, observability.port,
                                     "status-http")
        if web.port:
            from edge.service.web import OperatorWeb

            self.operator = OperatorWeb(self, self.config)
            self.web = HttpServer(self.operator.app(), web.bind, web.port, "web")

    # -- start-up ------------------------------------------------------------------------
    def start(self) -> None:
        # A thread waiting for the GIL (the ejection timer) waits up to this long for the one
        # holding it: Python's default 5 ms would show as ejection jitter.
        sys.setswitchinterval(GIL_SWITCH_S)
        # A full garbage collection holds the GIL while it walks every tracked object: the
        # libraries and models loaded so far are frozen out of it (they live as long as the
        # process), so one walks only what the line made since.
        gc.collect()
        gc.freeze()
        self.audit.start()
        self.scheduler.start()
        if self.shadow is not None:
            self.shadow.start()
        if self.line.simulator is not None:
            self.line.simulator.start()
        self.capture.start()
        for server in (self.status, self.web):
            if server is not None:
                server.start()
        self.started = True
        self.audit.event("start", {"model": self.model.path, "sha256": self.model.sha256, "version": self.model.version})
        self._notify_ready()

    def _notify_ready(self) -> None:
        """READY=1 once, when every actuator that fires is linked (until then: not ready, and said so)."""
        if self._ready_sent:
            return
        down = [a.name for a in self.actuators if a.fires and not a.healthy()]
        if down:
            self.notifier.status(f"waiting for actuator link(s): {', '.join(down)}")
            return
        self._ready_sent = True
        self.notifier.ready(f"sorting with {self.model.label}")

    # -- capture thread side ---------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        self.telemetry.frames.inc()
        predicted = self.line.trigger.predicted(frame)
        if predicted:
            self._enqueue(predicted)
            # Decisions first: searching the frame meanwhile would take a core from their inference.
            self._wait_idle(timeout=1 / self.config.source.fps)
        observations = self.line.trigger.observe(frame)
        self.telemetry.entered.inc(self.line.trigger.take_entered())
        for reason in self.line.trigger.take_unclassified():
            self.telemetry.unclassified.labels(reason).inc()
            self.audit.event("item_unclassified", {"reason": reason, "frame": frame.seq})
            log.warning("an item left the view unclassified: %s", reason)
        self._enqueue(observations)

    def _enqueue(self, observations) -> None:
        for obs in observations:
            with self._queue_cv:
                if len(self._queue) >= QUEUE_LENGTH:
                    dropped = self._queue.popleft()
                    self.telemetry.dropped.inc()
                    self.telemetry.unclassified.labels("inference behind").inc()
                    self.audit.event("item_unclassified", {"item_id": dropped.item_id, "reason": "inference behind"})
                    log.warning("inference behind: item %s dropped", dropped.item_id)
                self._queue.append(obs)
                self._queue_cv.notify()

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        last_ping, last_frames = 0.0, -1
        interval = self.notifier.watchdog_interval or 1.0
        while not stop.is_set():
            self._swap_model()
            obs = self._next(timeout=0.05)
            if obs is not None:
                try:
                    self.process(obs)
                finally:
                    self._done()
            now = time.monotonic()
            if self.capture.processed != last_frames and now - last_ping >= interval:
                self.notifier.watchdog()  # only from here, only while good frames are processed
                last_ping, last_frames = now, self.capture.processed
            self._watch_links()
            self._watch_camera()
            self._notify_ready()
            self._report_alive()
            self._watch_captures()
            if self.capture.ended.is_set() and not self._queue and self.scheduler.pending() == 0:
                break

    def _swap_model(self) -> None:
        """A checked model takes over here, between two items (none is in process)."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload_model()
        staged = self.swapper.take()
        if staged is None:
            return
        old = self.line.backend
        self.line.backend, self.line.pre = staged.backend, staged.pre
        self.telemetry.set_model(staged.backend.info)
        self.swapper.swapped(old.info, staged.backend.info, staged)
        self.notifier.status(f"sorting with {self.model.label}")
        old.close()

    def reload_model(self) -> None:
        """SIGHUP: the configured model (runtime.model, re-read from the config file) takes over
        if it passes the checks; a broken config or model changes nothing."""
        from edge.config import load_config

        try:
            config = load_config(self.config.source_file) if Path(self.config.source_file).is_file() else self.config
            self.swapper.request(model_path(config), "reload")
        except Exception as exc:  # e.g. a config with a typo: the running model stays
            self.audit.event("model_swap_refused", {"reason": "reload", "error": str(exc)})
            log.error("reload refused, %s keeps sorting: %s", self.model.label, exc)

    def _watch_links(self) -> None:
        """A lost link to an actuator that fires (PLC, eject commands): nothing pending survives,
        everything off, not ready. A lost telemetry-only link: an event and a counter, sorting goes on."""
        links_ok = True
        for actuator in self.actuators:
            healthy, was = actuator.healthy(), self._link_state.get(id(actuator), True)
            self.telemetry.link(actuator.name, healthy)
            links_ok &= healthy or not actuator.fires
            if healthy == was:
                continue
            self._link_state[id(actuator)] = healthy
            if healthy:
                self.audit.event("link_restored", {"actuator": actuator.name})
                log.info("%s: link restored", actuator.name)
                continue
            self.telemetry.link_faults.inc()
            if not actuator.fires:
                self.audit.event("telemetry_link_lost", {"actuator": actuator.name})
                log.error("%s: telemetry link lost; sorting goes on", actuator.name)
                continue
            dropped = self.scheduler.clear()
            self.all_off()
            self.audit.event("link_lost", {"actuator": actuator.name, "dropped_ejections": dropped})
            log.error("%s: link lost: %d pending ejection(s) dropped, outputs off, not ready", actuator.name, dropped)
        self._links_ok = links_ok

    def _watch_captures(self) -> None:
        """Captures paused (disk at its reserve) or back: an event, a gauge; sorting goes on."""
        reason = self.audit.captures.disabled_reason
        if (reason is None) == (self._captures_reason is None):
            return
        self._captures_reason = reason
        self.telemetry.captures_paused.set(0 if reason is None else 1)
        self.audit.event("captures_resumed" if reason is None else "captures_paused", {"reason": reason})

    def _report_alive(self) -> None:
        ready = self._ready(self._checks())
        for actuator in self.actuators:
            actuator.alive(ready)

    def _watch_camera(self) -> None:
        """A camera that stops delivering good frames (gone, frozen, another resolution): event, counter."""
        ok = self._camera_ok()
        if not ok and self._camera_was_ok:
            self.telemetry.camera_faults.inc()
            self.audit.event("camera_fault", {"error": self.capture.error, "frozen_frames": self.capture.frozen_frames,
                                              "wrong_size_frames": self.capture.wrong_size_frames,
                                              "failed_reopens": self.capture.failed_reopens})
            log.error("camera fault (%s): not ready", self.capture.error or "no good frame")
        elif ok and not self._camera_was_ok:
            self.audit.event("camera_restored", {})
            log.info("camera delivers good frames again")
        self._camera_was_ok = ok

    def _camera_ok(self) -> bool:
        age = time.monotonic() - self.capture.last_frame_at
        return age < self.config.source.read_timeout_s and self.capture.failed_reopens < self.config.source.reopen_limit \
            and not self.capture.wrong_size

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
            self._busy = bool(self._queue)
            return self._queue.popleft() if self._queue else None

    def _done(self) -> None:
        with self._queue_cv:
            self._busy = False
            self._queue_cv.notify_all()

    def _wait_idle(self, timeout: float) -> None:
        with self._queue_cv:
            self._queue_cv.wait_for(lambda: not self._queue and not self._busy, timeout)

    def process(self, obs: Observation) -> Optional[Dict]:
        started = time.monotonic()
        model = self.model
        max_age = self.config.line.max_frame_age_ms / 1000
        if started - obs.t_capture > max_age:
            return self._stale(obs, started)
        self.line.pre(obs.crop, self.backend.input)
        t_pre = time.monotonic()
        logits = self.backend.infer()
        t_inf = time.monotonic()
        if self.line.jitter_ms:
            time.sleep(random.uniform(*self.line.jitter_ms) / 1000)
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
               "reason": decision.reason, "x_mm": obs.x_mm, "y_mm": obs.y_mm, "belt_mm": obs.belt_mm,
               "eject_target_mm": target, "model_sha256": model.sha256, "model_version": model.label,
               "latency_ms": {k: round(v * 1000, 3) for k, v in latency.items()}}
        self.audit.record(row, obs.crop, keep_crop=decision.reason in REJECT_REASONS)
        if self.shadow is not None:
            self.shadow.offer(row, obs.crop)
        for actuator in self.actuators:
            try:
                actuator.decision(row)
            except Exception as exc:  # telemetry must never stop sorting
                log.error("%s: decision not published: %s", actuator.name, exc)
        self.telemetry.decision({**row, "t_capture": obs.t_capture}, latency)
        return row

    def _schedule(self, obs: Observation, decision) -> Optional[float]:
        ejector = self.ejectors.get(decision.bin) if decision.bin else None
        if ejector is None:
            return None  # pass-through bin, or sorting paused
        if not self._links_ok:
            self.telemetry.suppressed.inc()  # fail safe: no pulses while a link is down
            self.audit.event("ejection_not_fired", {"item_id": obs.item_id, "reason": "actuator link down"})
            return None
        outputs, width_s, lead_mm = self._valves(obs, ejector)
        if not outputs:
            self.telemetry.beside_bank.inc()
            self.audit.event("ejection_not_fired", {"item_id": obs.item_id, "reason": "outside the valve bank",
                                                    "y_mm": round(obs.y_mm, 1)})
            return None
        target = obs.belt_mm + (ejector.position_mm - obs.x_mm) - lead_mm
        if self.belt.seconds_until(target) * 1000 < self.config.line.min_lead_ms:
            self.telemetry.late.inc()
            self.audit.event("ejection_not_fired", {"item_id": obs.item_id, "reason": "decided too late"})
            log.warning("item %s: decided too late to reach the %s ejector; not fired", obs.item_id, decision.bin)
            return None
        self.scheduler.schedule(obs.item_id, outputs, target, width_s)
        return target

    def _valves(self, obs: Observation, ejector) -> Tuple[Tuple[int, ...], float, float]:
        """(outputs, pulse seconds, how far ahead of the item's centre it starts). A single valve
        fires the configured pulse as the centre passes; a bank fires the valves under the item
        from its leading edge to its trailing edge (each widened by lead_mm), capped."""
        cfg = self.config.decision
        if ejector.valves is None:
            return (ejector.output,), cfg.pulse_ms / 1000, 0.0
        outputs = ejector.valves.valves_for(obs.y_mm, obs.width_mm, cfg.lateral_margin_mm)
        span_mm = obs.length_mm + 2 * cfg.lead_mm
        width_s = min(max(span_mm / self.belt.speed(), cfg.pulse_ms / 1000), cfg.max_pulse_ms / 1000)
        return outputs, width_s, obs.length_mm / 2 + cfg.lead_mm

    def _stale(self, obs: Observation, now: float) -> None:
        self.telemetry.stale.inc()
        self.telemetry.unclassified.labels("stale frame").inc()
        self.audit.event("item_unclassified", {"item_id": obs.item_id, "reason": "stale frame",
                                               "age_ms": round((now - obs.t_capture) * 1000, 1)})
        log.warning("item %s: frame %.0f ms old, skipped", obs.item_id, (now - obs.t_capture) * 1000)
        return None

    def _on_fired(self, fired: Fired) -> None:
        self.telemetry.pulse(fired)

    def _on_late(self, item_id: str) -> None:
        self.telemetry.late.inc()
        self.audit.event("ejection_not_fired", {"item_id": item_id, "reason": "ejector timer late"})

    def _on_pulse_error(self, item_id: str) -> None:
        self.telemetry.actuator_errors.inc()

    # -- state -----------------------------------------------------------------------------
    def _checks(self) -> Dict:
        """What readiness is made of, each looked at once (the loop asks on every pass)."""
        return {"camera_ok": self._camera_ok(),
                "actuators_ok": all(a.healthy() for a in self.actuators if a.fires),
                "input_faults": self.line.inputs.faults(), "audit": self.audit.problem or "ok"}

    def _ready(self, checks: Dict) -> bool:
        return self.started and checks["camera_ok"] and checks["actuators_ok"] and not checks["input_faults"] \
            and checks["audit"] == "ok"

    def health(self):
        checks = self._checks()
        age = time.monotonic() - self.capture.last_frame_at
        degraded = [a.name for a in self.actuators if not a.fires and not a.healthy()]
        paused, forced = self.controls.state()
        details = {"ready": self._ready(checks), **checks,
                   "last_frame_age_s": round(age, 3), "camera_error": self.capture.error,
                   "bad_frames": self.capture.bad_frames, "frozen_frames": self.capture.frozen_frames,
                   "wrong_size_frames": self.capture.wrong_size_frames, "camera_reopens": self.capture.reopens,
                   "degraded_links": degraded, "paused": paused, "forced_bin": forced,
                   "model": self.model.path, "precision": self.model.precision,
                   "captures": self.audit.captures.disabled_reason or "ok",
                   "captures_skipped": self.audit.captures.skipped}
        return details["ready"], details

    def all_off(self) -> None:
        all_off(self.actuators)

    def shutdown(self) -> None:
        """Outputs off first, then everything else; safe to call after any failure."""
        self.notifier.stopping()
        self.capture.stop()
        self.line.trigger.close()
        dropped = self.scheduler.clear()
        self.scheduler.stop()
        self.all_off()
        for actuator in self.actuators:
            actuator.close()
        if dropped:
            log.info("%d pending ejection(s) dropped at shutdown", dropped)
        self.swapper.close()
        if self.shadow is not None:
            self.shadow.close()
        self.audit.event("stop", {"pending_dropped": dropped})
        self.audit.close()
        for server in (self.status, self.web):
            if server is not None:
                server.close()
        self.capture.join(timeout=2)
        self.line.source.close()
        self.line.inputs.close()
        self.backend.close()
