"""build_line(config): every part of a sorting line, opened in order, each handed what it
needs. If any part fails to open, the ones already open are closed again (outputs off).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from edge.config import Config, EjectorConfig
from edge.errors import ConfigError
from edge.line.belt import BeltTracker
from edge.line.decision import Controls, Decider
from edge.line.inputs import LineInputs
from edge.line.simulator import SimulatedConveyor
from edge.line.sources import Source, open_source
from edge.line.trigger import PhotoEyeTrigger, Trigger, VisionTrigger
from edge.plant.base import Actuator, all_off, open_actuators
from edge.plant.inputs import open_inputs
from edge.service.audit import AuditLog
from edge.service.telemetry import Telemetry
from edge.vision.backends import Backend, ModelInfo, open_backend
from edge.vision.preprocess import Preprocessor


@dataclass
class Line:
    config: Config
    backend: Backend
    pre: Preprocessor
    controls: Controls
    decider: Decider
    inputs: LineInputs
    belt: BeltTracker
    trigger: Trigger
    actuators: List[Actuator]
    ejectors: Dict[str, EjectorConfig]  # bin -> its ejector
    audit: AuditLog
    source: Source
    telemetry: Telemetry
    simulator: Optional[SimulatedConveyor] = None
    jitter_ms: tuple = field(default=())  # simulated slow inference (demo/tests of the timing guarantees)

    @property
    def model(self) -> ModelInfo:
        return self.backend.info


def build_line(config: Config, simulator: Optional[SimulatedConveyor] = None,
               actuators: Optional[Sequence[Actuator]] = None) -> Line:
    with contextlib.ExitStack() as undo:
        backend = open_model(config)
        undo.callback(backend.close)
        inputs = open_inputs(config, simulator.inputs() if simulator is not None else None)
        undo.callback(inputs.close)
        belt = BeltTracker(config.line, inputs.encoder.count if inputs.encoder else None)
        trigger = (PhotoEyeTrigger(config, belt, inputs.photo_eye.blocked) if config.trigger.type == "photo_eye"
                   else VisionTrigger(config, belt))
        undo.callback(trigger.close)
        if actuators is None:
            actuators = open_actuators(config.actuators, config.decision.max_pulse_ms / 1000)
            undo.callback(_close_all, actuators)
        actuators = list(actuators)
        all_off(actuators)  # a known state before anything can fire (an unreachable PLC: not ready)
        audit = AuditLog(config.audit, config.run_path, backend.info.sha256)
        undo.callback(audit.db.close)
        source = open_source(config, simulator)
        controls = Controls()
        line = Line(config=config, backend=backend, pre=Preprocessor(backend.info.preprocess), controls=controls,
                    decider=Decider(config, backend.info.classes, controls), inputs=inputs, belt=belt,
                    trigger=trigger, actuators=actuators, ejectors={e.bin: e for e in config.decision.ejectors},
                    audit=audit, source=source, telemetry=Telemetry(), simulator=simulator,
                    jitter_ms=config.simulator.processing_jitter_ms if simulator is not None else ())
        undo.pop_all()
        return line


def open_model(config: Config) -> Backend:
    """The configured model (default <run_dir>/model.onnx), refused if its classes differ from the config's."""
    path = model_path(config)
    backend = open_backend(path, **runtime_options(config, path))
    if list(backend.info.classes) != list(config.classes):
        backend.close()
        raise ConfigError(f"{config.source_file}: 'classes' {list(config.classes)} do not match the "
                          f"model {path} ({list(backend.info.classes)}); fix the config or the model")
    return backend


def runtime_options(config: Config, path: Path) -> Dict:
    """How the line opens a model file: ONNX Runtime's providers and threads from `runtime`, and
    flip averaging for any backend."""
    runtime = config.runtime
    if path.suffix != ".onnx":
        return {"flip_average": runtime.flip_average}
    return {"providers": [(p.name, dict(p.options)) for p in runtime.providers], "threads": runtime.threads,
            "spinning": runtime.spinning, "flip_average": runtime.flip_average}


def model_path(config: Config) -> Path:
    return Path(config.runtime.model) if config.runtime.model else config.run_path / "model.onnx"


def _close_all(actuators: Sequence[Actuator]) -> None:
    for actuator in actuators:
        actuator.close()
