"""The line's inputs from the config's `inputs` section, or from the simulated conveyor."""
from __future__ import annotations

from typing import Optional

from edge.config import Config
from edge.errors import ConfigError
from edge.line.inputs import Encoder, LineInputs, PhotoEye


def open_inputs(config: Config, simulated: Optional[LineInputs] = None) -> LineInputs:
    """The encoder when line.encoder is on, the photo-eye when the trigger is one; each from
    `inputs` if configured there, else from the simulated conveyor, else a ConfigError."""
    encoder = _encoder(config, simulated) if config.line.encoder else None
    try:
        photo_eye = _photo_eye(config, simulated) if config.trigger.type == "photo_eye" else None
    except Exception:
        if encoder is not None:
            encoder.close()
        raise
    return LineInputs(encoder=encoder, photo_eye=photo_eye)


def _encoder(config: Config, simulated: Optional[LineInputs]) -> Encoder:
    cfg = config.inputs.encoder
    if cfg is not None and cfg.type == "modbus":
        from edge.plant.modbus import ModbusEncoder

        return ModbusEncoder(cfg)
    if cfg is not None:
        from edge.plant.gpio import GpioEncoder

        return GpioEncoder(cfg)
    if simulated is not None and simulated.encoder is not None:
        return simulated.encoder
    raise ConfigError(f"{config.source_file}: 'line.encoder' is on, but no 'inputs.encoder' is configured; add "
                      f"one (type: gpio or modbus) or set line.encoder: false and line.belt_speed_mm_s")


def _photo_eye(config: Config, simulated: Optional[LineInputs]) -> PhotoEye:
    cfg = config.inputs.photo_eye
    if cfg is not None:
        from edge.plant.gpio import GpioPhotoEye

        return GpioPhotoEye(cfg)
    if simulated is not None and simulated.photo_eye is not None:
        return simulated.photo_eye
    raise ConfigError(f"{config.source_file}: 'trigger.type: photo_eye' needs a photo-eye input; add "
                      f"'inputs.photo_eye' (type: gpio, line: N) or use trigger.type: vision")
