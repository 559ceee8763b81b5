"""Typed, strict configuration: YAML in, frozen dataclasses out.

configs/*.yaml is the single source of truth for classes, preprocessing, data paths and
training. Every section is a dataclass; unknown keys, wrong types and bad values raise
ConfigError naming the file and the key, so nothing starts in an unknown state.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from edge.errors import ConfigError

BACKBONES = ("efficientnet_lite0", "resnet18")
CALIBRATION_METHODS = ("entropy", "percentile", "max")


@dataclass(frozen=True)
class DataConfig:
    root: str = "../shared/datasets/trashnet"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    # "imagenet": the offline ImageNet weights for the backbone; "none": from scratch;
    # anything else: path to a state_dict file.
    weights: str = "imagenet"
    input_size: int = 224
    # Leading stages kept frozen while fine-tuning (0 trains everything).
    freeze_stages: int = 3
    dropout: float = 0.2


@dataclass(frozen=True)
class PreprocessConfig:
    # "auto" picks the backbone's own normalisation (see edge.preprocess.NORMALISATIONS).
    normalisation: str = "auto"


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    rotation_deg: float = 15.0
    translate: float = 0.1
    color_jitter: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    early_stop_patience: int = 5
    class_weights: bool = True
    workers: int = 2
    seed: int = 42
    device: str = "auto"
    cache_images: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    dynamic_batch: bool = False
    parity_images: int = 16
    parity_tolerance: float = 1e-4


@dataclass(frozen=True)
class CalibrationConfig:
    images: int = 300                   # from the train split, stratified; never test images
    # Tried in turn; the variant with the best validation accuracy (then agreement with FP32) is kept.
    methods: Tuple[str, ...] = ("entropy", "percentile", "max")
    percentile: float = 99.999
    try_float_first_last: bool = True   # also try keeping the first conv and the classifier in float
    seed: int = 42
    # TensorRT version written into the legacy calibration cache header (8.x/10.x implicit INT8).
    trt_cache_version: str = "8.5.2"


@dataclass(frozen=True)
class EngineConfig:
    workspace_mib: int = 1024
    timing_cache: str = ""        # default: <run_dir>/timing.cache, reused across builds
    dla_core: int = -1            # >= 0 builds for that DLA core (Xavier/Orin), GPU fallback on
    max_batch: int = 1            # > 1 adds an optimisation profile (needs a dynamic-batch ONNX)
    # qdq: the Q/DQ ONNX (every TensorRT); calibration_cache: implicit INT8 from the legacy
    # cache (TensorRT 8.x/10.x only).
    int8_mode: str = "qdq"


@dataclass(frozen=True)
class Config:
    classes: Tuple[str, ...] = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    source_file: str = field(default="<defaults>", compare=False)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source_file")
        return data

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; raises ConfigError with file and key on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass --config with an existing file, "
                          f"e.g. configs/default.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(raw, str(path))


def config_from_dict(raw: Any, source: str = "<dict>") -> Config:
    config = _build(Config, raw, source, "")
    config = dataclasses.replace(config, source_file=source)
    _check_values(config, source)
    return config


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_file"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' "
                          f"(allowed here: {', '.join(sorted(fields))})")
    values = {name: _coerce(hints[name], raw[name], source, prefix + name)
              for name in fields if name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".")
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return _coerce(inner, value, source, key)
    if origin in (tuple, list, Tuple, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(inner, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _check_values(c: Config, source: str) -> None:
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{source}: '{key}' {msg}")

    if len(c.classes) < 2 or len(set(c.classes)) != len(c.classes):
        bad("classes", "must list at least two distinct class names")
    if c.model.backbone not in BACKBONES:
        bad("model.backbone", f"must be one of {', '.join(BACKBONES)}, got {c.model.backbone!r}")
    if not 32 <= c.model.input_size <= 1024:
        bad("model.input_size", f"must be between 32 and 1024, got {c.model.input_size}")
    if c.model.freeze_stages < 0:
        bad("model.freeze_stages", "must be >= 0")
    fractions = c.data.val_fraction + c.data.test_fraction
    if not (0 < c.data.val_fraction < 1 and 0 < c.data.test_fraction < 1 and fractions < 1):
        bad("data.val_fraction", "and data.test_fraction must be in (0, 1) and sum below 1")
    for key in ("epochs", "batch_size"):
        if getattr(c.train, key) < 1:
            bad(f"train.{key}", "must be >= 1")
    if c.train.device not in ("auto", "cpu", "cuda"):
        bad("train.device", "must be auto, cpu or cuda")
    unknown = sorted(set(c.calibration.methods) - set(CALIBRATION_METHODS))
    if unknown or not c.calibration.methods:
        bad("calibration.methods", f"must list some of {', '.join(CALIBRATION_METHODS)}, got {unknown or '[]'}")
    if c.calibration.images < 1:
        bad("calibration.images", "must be >= 1")
    if c.engine.int8_mode not in ("qdq", "calibration_cache"):
        bad("engine.int8_mode", "must be qdq or calibration_cache")
    if c.engine.workspace_mib < 16 or c.engine.max_batch < 1:
        bad("engine.workspace_mib", "must be >= 16 (and engine.max_batch >= 1)")
    from edge.preprocess import NORMALISATIONS  # late import: preprocess needs no config

    if c.preprocess.normalisation not in ("auto",) + tuple(NORMALISATIONS):
        bad("preprocess.normalisation", f"must be auto or one of {', '.join(NORMALISATIONS)}")
