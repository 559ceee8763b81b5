"""Typed, strict configuration: YAML in, frozen pydantic models out.

configs/*.yaml is the single source of truth for classes, preprocessing, data paths,
training and the line. One module per family of sections; `loader` holds the root model,
reads YAML and turns validation errors into messages naming the file, the key and the fix.
"""
from edge.config.line import (DecisionConfig, EjectorConfig, LineConfig, SimulatorConfig, SourceConfig,
                              TriggerConfig)
from edge.config.loader import Config, config_from_dict, json_schema, load_config, schema_text
from edge.config.model import (AugmentConfig, CalibrationConfig, DataConfig, DistillConfig, EngineConfig,
                               ExportConfig, MixConfig, ModelConfig, PreprocessConfig, RuntimeConfig, TrainConfig)
from edge.config.plant import (ACTUATOR_TYPES, ActuatorConfig, GpioActuatorConfig, GpioInputConfig, InputsConfig,
                               ModbusActuatorConfig, ModbusEncoderConfig, MqttActuatorConfig,
                               SimulatedActuatorConfig)
from edge.config.service import AuditConfig, ModelsConfig, ObservabilityConfig, WebConfig

__all__ = ["ACTUATOR_TYPES", "ActuatorConfig", "AuditConfig", "AugmentConfig", "CalibrationConfig", "Config",
           "DataConfig", "DecisionConfig", "DistillConfig", "EjectorConfig", "EngineConfig", "ExportConfig", "GpioActuatorConfig",
           "GpioInputConfig", "InputsConfig", "LineConfig", "MixConfig", "ModbusActuatorConfig", "ModbusEncoderConfig",
           "ModelConfig", "MqttActuatorConfig", "ObservabilityConfig", "PreprocessConfig", "RuntimeConfig",
           "SimulatedActuatorConfig", "SimulatorConfig", "SourceConfig", "TrainConfig", "TriggerConfig", "WebConfig", "ModelsConfig",
           "config_from_dict", "json_schema", "load_config", "schema_text"]
