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
from typing import Any, Dict, List, Tuple

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
    vflip: float = 0.0        # > 0 where items lie on the belt in any orientation (top-down camera)
    rotation_deg: float = 15.0
    translate: float = 0.1
    scale: float = 0.0        # +-fraction: items of one class come in several sizes
    color_jitter: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0   # < 1: the pretrained backbone learns slower than the new head
    weight_decay: float = 1e-4
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    early_stop_patience: int = 5
    class_weights: bool = True
    label_smoothing: float = 0.0
    ema_decay: float = 0.0           # > 0: validate and keep an exponential moving average of the weights
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
    max_drop: float = 0.005             # INT8 may lose at most this much validation accuracy ...
    max_float_layers: int = 4           # ... else up to this many most sensitive layers stay float
    sensitivity_images: int = 64        # validation images per layer in the sensitivity scan
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
class SourceConfig:
    # sim:// | file:///path/video.mp4 | folder:///path/images | v4l2:///dev/video0 | csi://0 | rtsp://host/...
    uri: str = "sim://"
    width: int = 640
    height: int = 360
    fps: float = 30.0
    read_timeout_s: float = 2.0   # no frame for this long: reopen the source
    reopen_limit: int = 5         # failed reopenings in a row before health reports the camera down
    loop: bool = False            # file/folder sources: start again at the end


@dataclass(frozen=True)
class LineConfig:
    belt_speed_mm_s: float = 400.0   # used when no encoder is configured
    encoder: bool = False            # belt position from the encoder input instead of fixed speed
    mm_per_count: float = 0.1
    mm_per_px: float = 0.625         # camera scale along the belt (image x axis = belt direction)
    max_frame_age_ms: float = 1000.0  # older observations are skipped, never acted on
    min_lead_ms: float = 20.0        # an ejection closer than this to now is too late: not fired


@dataclass(frozen=True)
class TriggerConfig:
    type: str = "vision"             # vision (background subtraction) | photo_eye
    roi: Tuple[float, ...] = (0.0, 0.0, 1.0, 1.0)  # x, y, w, h as fractions of the frame
    diff_threshold: int = 40          # grey levels between the frame and the empty belt
    min_area: float = 0.03            # smallest item, as a fraction of the ROI
    learn_frames: int = 10            # empty-belt frames averaged at start
    edge_margin_px: int = 4           # an item touching the ROI edge is not fully in view yet
    min_gap_mm: float = 60.0          # two observations closer than this on the belt are one item
    join_mm: float = 50.0             # foreground parts closer than this are joined into one item
    photo_eye_position_mm: float = -150.0  # photo_eye: beam position relative to the camera centre
    item_length_mm: float = 160.0          # photo_eye: expected item length along the belt


@dataclass(frozen=True)
class EjectorConfig:
    bin: str
    position_mm: float               # downstream of the camera centre
    output: int                      # actuator output (valve/coil index)


@dataclass(frozen=True)
class DecisionConfig:
    threshold: float = 0.6           # below: reject bin
    reject_bin: str = "reject"
    bins: Dict[str, str] = field(default_factory=dict)  # class -> bin (default: a bin per class)
    pulse_ms: float = 30.0
    max_pulse_ms: float = 100.0      # hard cap, also enforced by the actuator drivers
    ejectors: Tuple[EjectorConfig, ...] = ()


@dataclass(frozen=True)
class ActuatorConfig:
    type: str = "simulated"          # simulated | gpio | modbus | mqtt (several may be listed)
    # gpio: one line per ejector output
    chip: str = "/dev/gpiochip0"     # libgpiod chip (off-Jetson)
    lines: Tuple[int, ...] = ()      # output n drives lines[n] (BOARD pin numbers with Jetson.GPIO)
    library: str = "auto"            # auto (Jetson.GPIO on a Jetson, else libgpiod) | jetson | gpiod
    active_low: bool = False
    # modbus (TCP) and mqtt: the peer
    host: str = "127.0.0.1"
    port: int = 0                    # 0: the protocol's default (502 / 1883, 8883 with TLS)
    timeout_s: float = 0.5
    retries: int = 1
    # modbus
    unit_id: int = 1
    coil_base: int = 0               # output n -> coil coil_base + n; nothing outside is written
    coil_count: int = 8
    register_base: int = 100         # heartbeat, status bits, last item id, last bin
    heartbeat_s: float = 0.5
    # mqtt
    topic: str = "scrapsort/line1"
    qos: int = 1
    username: str = ""
    password_file: str = ""          # the secret lives in its own file (mode 0600), never here
    tls: bool = False
    ca_file: str = ""
    commands: bool = False           # also publish ejection commands for a downstream controller


@dataclass(frozen=True)
class AuditConfig:
    db: str = ""                     # default <run_dir>/audit.db
    captures_dir: str = ""           # default <run_dir>/captures
    captures_quota_mb: float = 500.0
    sample_rate: float = 0.02        # share of confident items also saved, for spot checks
    max_db_mb: float = 200.0
    max_age_days: float = 90.0


@dataclass(frozen=True)
class ObservabilityConfig:
    bind: str = "127.0.0.1"          # loopback by default: expose deliberately
    port: int = 9108                 # 0 disables the HTTP endpoint


@dataclass(frozen=True)
class WebConfig:
    bind: str = "127.0.0.1"          # loopback by default; exposing it requires a token
    port: int = 8080                 # 0 disables the operator page
    token_file: str = ""             # file holding the token every control action must carry
    review_dir: str = ""             # relabelled captures go to <review_dir>/<class>/ (default <run_dir>/review)
    preview_fps: float = 5.0         # the live view drops frames, the sorting loop never waits for it


@dataclass(frozen=True)
class SimulatorConfig:
    dataset: str = "../shared/datasets/trashnet"
    split: str = "test"              # items drawn from this split of the run's manifest, if present
    items: int = 30
    spacing_mm: float = 300.0
    item_length_mm: float = 160.0
    speed_variation: float = 0.0     # 0.3: belt speed swings +-30% (sine), read through the encoder
    speed_period_s: float = 4.0
    processing_jitter_ms: Tuple[float, ...] = ()  # (low, high): injected delay after inference
    seed: int = 7


@dataclass(frozen=True)
class RuntimeConfig:
    model: str = ""                  # .onnx or .engine; default <run_dir>/model.onnx
    providers: Tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0
    allow_root: bool = False         # the daemon refuses root unless this is set deliberately


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
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    line: LineConfig = field(default_factory=LineConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    actuators: Tuple[ActuatorConfig, ...] = (ActuatorConfig(),)
    audit: AuditConfig = field(default_factory=AuditConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    web: WebConfig = field(default_factory=WebConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
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
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        inner = typing.get_args(hint)[1]
        return {str(k): _coerce(inner, v, source, f"{key}.{k}") for k, v in value.items()}
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


def bin_of(c: "Config", label: str) -> str:
    return c.decision.bins.get(label, label)


def _check_line(c: "Config", bad) -> None:
    d = c.decision
    unknown = sorted(set(d.bins) - set(c.classes))
    if unknown:
        bad(f"decision.bins.{unknown[0]}", f"is not a class (classes: {', '.join(c.classes)})")
    if not 0.0 <= d.threshold <= 1.0:
        bad("decision.threshold", "must be between 0 and 1")
    if not 0 < d.pulse_ms <= d.max_pulse_ms:
        bad("decision.pulse_ms", f"must be > 0 and <= decision.max_pulse_ms ({d.max_pulse_ms})")
    bins = {bin_of(c, label) for label in c.classes} | {d.reject_bin}
    for i, ejector in enumerate(d.ejectors):
        if ejector.bin not in bins:
            bad(f"decision.ejectors[{i}].bin", f"'{ejector.bin}' is no bin (bins: {', '.join(sorted(bins))})")
        if ejector.position_mm <= 0:
            bad(f"decision.ejectors[{i}].position_mm", "must be downstream of the camera (> 0)")
    if len({e.output for e in d.ejectors}) != len(d.ejectors) or len({e.bin for e in d.ejectors}) != len(d.ejectors):
        bad("decision.ejectors", "each ejector needs its own bin and its own output")
    if c.trigger.type not in ("vision", "photo_eye"):
        bad("trigger.type", "must be vision or photo_eye")
    if len(c.trigger.roi) != 4 or not all(0 <= v <= 1 for v in c.trigger.roi):
        bad("trigger.roi", "must be [x, y, w, h] as fractions of the frame")
    if c.line.belt_speed_mm_s <= 0 or c.line.mm_per_px <= 0 or c.line.mm_per_count <= 0:
        bad("line", "belt_speed_mm_s, mm_per_px and mm_per_count must be > 0")
    if c.simulator.processing_jitter_ms and len(c.simulator.processing_jitter_ms) != 2:
        bad("simulator.processing_jitter_ms", "must be [low, high] in ms")
    from edge.actuators import ACTUATOR_TYPES  # late: the drivers import the config types

    for i, actuator in enumerate(c.actuators):
        if actuator.type not in ACTUATOR_TYPES:
            bad(f"actuators[{i}].type", f"must be one of {', '.join(ACTUATOR_TYPES)}")


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
    if not 0.0 <= c.train.label_smoothing < 1.0:
        bad("train.label_smoothing", "must be in [0, 1)")
    if not 0.0 <= c.train.ema_decay < 1.0:
        bad("train.ema_decay", "must be in [0, 1) (0 turns the average off)")
    aug = c.train.augment
    if not (0 <= aug.hflip <= 1 and 0 <= aug.vflip <= 1 and 0 <= aug.scale < 1 and 0 <= aug.translate < 1):
        bad("train.augment", "flip probabilities must be in [0, 1], scale and translate in [0, 1)")
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
    _check_line(c, bad)
    from edge.preprocess import NORMALISATIONS  # late import: preprocess needs no config

    if c.preprocess.normalisation not in ("auto",) + tuple(NORMALISATIONS):
        bad("preprocess.normalisation", f"must be auto or one of {', '.join(NORMALISATIONS)}")
