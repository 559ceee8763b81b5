"""The whole line config: the root model with its cross-section checks, the YAML reader
(duplicate keys refused), errors that name the file, the key and the fix, and the JSON Schema.
"""
from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Dict, Tuple

import yaml
from pydantic import BaseModel, PrivateAttr, ValidationError, field_validator, model_validator

from edge.config.base import Invalid, Section, Str
from edge.config.line import DecisionConfig, LineConfig, SimulatorConfig, SourceConfig, TriggerConfig
from edge.config.model import (CalibrationConfig, DataConfig, EngineConfig, ExportConfig, ModelConfig,
                               PreprocessConfig, RuntimeConfig, TrainConfig)
from edge.config.plant import ActuatorConfig, InputsConfig, SimulatedActuatorConfig
from edge.config.service import AuditConfig, ModelsConfig, ObservabilityConfig, WebConfig
from edge.errors import ConfigError

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "configs" / "scrapsort.schema.json"


class Config(Section):
    """One file configures the whole product; every section has defaults."""

    classes: Tuple[Str, ...] = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
    run_dir: Str = "runs/default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    engine: EngineConfig = EngineConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    source: SourceConfig = SourceConfig()
    line: LineConfig = LineConfig()
    trigger: TriggerConfig = TriggerConfig()
    decision: DecisionConfig = DecisionConfig()
    actuators: Tuple[ActuatorConfig, ...] = (SimulatedActuatorConfig(),)
    inputs: InputsConfig = InputsConfig()
    audit: AuditConfig = AuditConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    web: WebConfig = WebConfig()
    models: ModelsConfig = ModelsConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    _source_file: str = PrivateAttr("<defaults>")

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes):
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError("must list at least two distinct class names")
        return classes

    @field_validator("actuators")
    @classmethod
    def _some_actuator(cls, actuators):
        if not actuators:
            raise ValueError("must list at least one actuator (type: simulated for a dry run)")
        return actuators

    @model_validator(mode="after")
    def _bins_and_outputs(self):
        decision = self.decision
        unknown = sorted(set(decision.bins) - set(self.classes))
        if unknown:
            raise Invalid(f"decision.bins.{unknown[0]}", f"is not a class (classes: {', '.join(self.classes)})")
        bins = {decision.bin_of(label) for label in self.classes} | {decision.reject_bin}
        for i, ejector in enumerate(decision.ejectors):
            if ejector.bin not in bins:
                raise Invalid(f"decision.ejectors[{i}].bin", f"'{ejector.bin}' is no bin (bins: {', '.join(sorted(bins))})")
        for i, actuator in enumerate(self.actuators):
            count = actuator.output_count()
            beyond = [o for e in decision.ejectors for o in e.outputs if count is not None and o >= count]
            if beyond:
                raise Invalid(f"actuators[{i}]", f"({actuator.type}) has {count} outputs (0..{count - 1}), but "
                                                 f"decision.ejectors use output {beyond[0]}; add outputs or renumber")
        return self

    @property
    def source_file(self) -> str:
        return self._source_file

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json")


# -- reading -------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """A duplicated key is an error: YAML would silently keep the last one."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; raises ConfigError with file and key on any problem."""
    return config_from_dict(_read_yaml(Path(path), ()), str(path))


def _read_yaml(path: Path, chain: tuple) -> Dict[str, Any]:
    """A config file's mapping. `extends: other.yaml` (relative to the file) starts from that
    file's settings; this file's keys replace or deep-merge into them (a recipe states only
    what it changes)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass --config with an existing file, "
                          f"e.g. configs/default.yaml)")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: `extends` goes round in a circle ({' -> '.join(str(p) for p in chain)})")
    try:
        with open(path) as stream:  # the stream's name puts the file into YAML's error marks
            raw = yaml.load(stream, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    base = raw.pop("extends")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected the path of another config file")
    return _merged(_read_yaml(path.parent / base, chain + (path.resolve(),)), raw)


def _merged(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both else value
    return merged


def config_from_dict(raw: Any, source: str = "<dict>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level: expected a mapping, got {type(raw).__name__}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(error, source) for error in exc.errors())) from None
    config._source_file = source
    return config


def json_schema() -> Dict[str, Any]:
    schema = Config.model_json_schema()
    schema["title"] = "scrapsort line configuration"
    schema["properties"]["extends"] = {"type": "string", "description": "another config file (relative to this "
                                       "one) whose settings this file starts from and overrides"}
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=1, sort_keys=True) + "\n"


# -- errors --------------------------------------------------------------------------------
_TYPE_NAMES = {"int_type": "int", "int_parsing": "int", "bool_type": "bool", "bool_parsing": "bool",
               "float_type": "a number", "float_parsing": "a number", "string_type": "str",
               "tuple_type": "a list", "list_type": "a list", "finite_number": "a finite number"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _describe(error: Dict[str, Any], source: str) -> str:
    key, model = _walk(error["loc"])
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "value_error" and isinstance(ctx.get("error"), Invalid):
        problem = ctx["error"]
        key = ".".join(part for part in (key, problem.key) if part)
        return f"{source}: '{key}' {problem}"
    if kind == "extra_forbidden":
        tag = _tag(model)
        where = f"for type {tag}" if tag else "here"
        allowed = ", ".join(sorted(model.model_fields)) if model else "none"
        return f"{source}: unknown key '{key}' (allowed {where}: {allowed})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{source}: {key or 'top level'}: expected a mapping, got {type(value).__name__}"
    if kind == "missing":
        return f"{source}: '{key}' is required"
    if kind in _TYPE_NAMES:
        return f"{source}: '{key}' must be {_TYPE_NAMES[kind]}, got {value!r}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"{source}: '{key}' must be {_BOUNDS[kind]} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"{source}: '{key}' must be {ctx['expected']}, got {value!r}"
    if kind == "union_tag_invalid":
        return f"{source}: '{key}.type' must be one of {ctx['expected_tags']}, got {ctx['tag']!r}"
    if kind == "union_tag_not_found":
        return f"{source}: '{key}.type' is required (it says which kind of device this is)"
    if kind == "too_short":
        return f"{source}: '{key}' must list at least {ctx['min_length']}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{source}: '{key}' {message}"


def _walk(loc: Tuple) -> Tuple[str, Any]:
    """The dotted key a pydantic error location names, and the model class it sits in.

    Discriminated unions put the chosen tag into the location; it is no key, so it is dropped."""
    node: Any = Config
    parent: Any = Config
    key = ""
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int):
            key += f"[{part}]"
            node = typing.get_args(node)[0] if typing.get_args(node) else None
            continue
        if isinstance(node, type) and issubclass(node, BaseModel):
            parent = node
            field = node.model_fields.get(part)
            key = f"{key}.{part}" if key else str(part)
            node = field.annotation if field else None
            continue
        members = [m for m in typing.get_args(node) if isinstance(m, type) and issubclass(m, BaseModel)]
        tagged = [m for m in members if _tag(m) == part]
        if tagged:  # the discriminator's tag
            node = parent = tagged[0]
            continue
        if typing.get_origin(node) is dict:
            key = f"{key}.{part}"
            node = typing.get_args(node)[1]
            continue
        key = f"{key}.{part}" if key else str(part)
        node = None
    return key, parent


def _tag(model: Any) -> Any:
    """The `type` a member of a discriminated union answers to, else None."""
    field = getattr(model, "model_fields", {}).get("type")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if len(args) == 1 else None


def _unwrap(node: Any) -> Any:
    """Annotated[X, ...] -> X; Optional[X] -> X."""
    while True:
        if typing.get_origin(node) is typing.Annotated:
            node = typing.get_args(node)[0]
            continue
        args = typing.get_args(node)
        if typing.get_origin(node) is typing.Union and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            node = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
            continue
        return node
