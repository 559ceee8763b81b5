from pathlib import Path

import pytest

from edge.cli import main
from edge.config import load_config
from edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "line.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "recipes").glob("*.yaml")):
        config = load_config(path)
        assert config.classes and config.source_file == str(path)


def test_missing_sections_are_filled_in(tmp_path):
    config = load_config(write(tmp_path, "classes: [a, b]\n"))
    assert config.classes == ("a", "b")
    assert config.model.backbone == "efficientnet_lite0"
    assert config.train.lr == pytest.approx(1e-3)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "model:\n  backbon: resnet18\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.backbon" in str(err.value) and str(path) in str(err.value)
    assert "backbone" in str(err.value)  # lists what is allowed


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.epochs' must be int, got 'ten'"):
        load_config(write(tmp_path, "train:\n  epochs: ten\n"))
    with pytest.raises(ConfigError, match=r"'train.class_weights' must be bool"):
        load_config(write(tmp_path, "train:\n  class_weights: 1\n"))


def test_bad_values_and_sections(tmp_path):
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(write(tmp_path, "model:\n  backbone: vgg\n"))
    with pytest.raises(ConfigError, match="'model' .*expected a mapping|model: expected a mapping"):
        load_config(write(tmp_path, "model: 3\n"))
    with pytest.raises(ConfigError, match="classes"):
        load_config(write(tmp_path, "classes: [a, a]\n"))
    with pytest.raises(ConfigError, match="train.label_smoothing"):
        load_config(write(tmp_path, "train:\n  label_smoothing: 1.5\n"))
    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_config(write(tmp_path, "train:\n  ema_decay: 1.0\n"))
    with pytest.raises(ConfigError, match="train.augment"):
        load_config(write(tmp_path, "train:\n  augment:\n    vflip: 2\n"))


def test_missing_file_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


def test_cli_reports_config_error_without_traceback(tmp_path, capsys, caplog):
    path = write(tmp_path, "trian: {}\n")
    assert main(["prepare", "--config", str(path)]) == 78
    assert "unknown key 'trian'" in caplog.text
    assert "Traceback" not in capsys.readouterr().err


def test_duplicate_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"duplicate key 'threshold'.*\n.*line 3"):
        load_config(write(tmp_path, "decision:\n  threshold: 0.5\n  threshold: 0.9\n"))


def test_each_actuator_type_has_its_own_keys(tmp_path):
    """A gpio actuator has no MQTT topic: the old flat model silently accepted it."""
    with pytest.raises(ConfigError, match=r"unknown key 'actuators\[0\]\.topic' \(allowed for type gpio: "
                                          r"active_low, chip, library, lines, type\)"):
        load_config(write(tmp_path, "actuators:\n  - {type: gpio, lines: [5], topic: x}\n"))
    with pytest.raises(ConfigError, match=r"'actuators\[0\]\.type' must be one of 'simulated', 'gpio', 'modbus', "
                                          r"'mqtt', got 'laser'"):
        load_config(write(tmp_path, "actuators:\n  - {type: laser}\n"))
    config = load_config(write(tmp_path, "actuators:\n  - {type: modbus, host: 10.0.0.5, coil_count: 6}\n"))
    assert config.actuators[0].coil_count == 6 and not hasattr(config.actuators[0], "topic")


def test_cross_checks_and_finite_numbers(tmp_path):
    ejector = "decision:\n  ejectors:\n    - {bin: glass, position_mm: 500, output: 3}\n"
    with pytest.raises(ConfigError, match=r"'actuators\[0\]' \(gpio\) has 2 outputs .* use output 3"):
        load_config(write(tmp_path, ejector + "actuators:\n  - {type: gpio, lines: [5, 6]}\n"))
    with pytest.raises(ConfigError, match=r"'decision.max_pulse_ms' must be a finite number"):
        load_config(write(tmp_path, "decision:\n  max_pulse_ms: .inf\n"))
    with pytest.raises(ConfigError, match=r"'decision.pulse_ms' must be <= decision.max_pulse_ms"):
        load_config(write(tmp_path, "decision:\n  pulse_ms: 200\n"))
    with pytest.raises(ConfigError, match=r"'web.bind' must be an IP address"):
        load_config(write(tmp_path, "web:\n  bind: everywhere\n"))
    with pytest.raises(ConfigError, match=r"faint_threshold \(30\) must not exceed diff_threshold \(20\)"):
        load_config(write(tmp_path, "trigger:\n  diff_threshold: 20\n  faint_threshold: 30\n"))


def test_every_config_error_exits_78(tmp_path, caplog):
    for text in ("decision:\n  threshold: 0.5\n  threshold: 0.9\n", "actuators:\n  - {type: laser}\n",
                 "line:\n  belt_speed_mm_s: -1\n", "model: [unclosed\n"):
        assert main(["config", "check", str(write(tmp_path, text))]) == 78, text


def test_shipped_json_schema_is_current_and_describes_the_config(capsys):
    import json

    from edge.config import json_schema, schema_text

    shipped = REPO / "configs" / "scrapsort.schema.json"
    assert shipped.read_text() == schema_text(), "run: scrapsort config schema --output configs/scrapsort.schema.json"
    schema = json_schema()
    assert schema["additionalProperties"] is False and "actuators" in schema["properties"]
    tags = {m["properties"]["type"]["const"] for m in schema["$defs"].values()
            if m.get("title", "").endswith("ActuatorConfig") and "type" in m.get("properties", {})}
    assert tags == {"simulated", "gpio", "modbus", "mqtt"}
    assert main(["config", "schema"]) == 0 and json.loads(capsys.readouterr().out) == schema


def test_fault_values_once_accepted_are_refused_with_exit_78(tmp_path, caplog):
    """Each of these loaded before (or crashed later with exit 70, which systemd restarts)."""
    cases = {
        "decision:\n  threshold: 0.9\ndecision:\n  threshold: 0.5\n": "duplicate key 'decision'",
        "actuators:\n  - {type: modbus, coil_count: 4}\ndecision:\n  ejectors:\n    - {bin: glass, position_mm: 500, output: 6}\n":
            "has 4 outputs",
        "source:\n  fps: 0\n": "'source.fps' must be > 0",
        "actuators:\n  - {type: mqtt, qos: 7}\n": "'actuators[0].qos' must be 0, 1 or 2",
        "line:\n  max_frame_age_ms: -5\n": "'line.max_frame_age_ms' must be > 0",
        "audit:\n  sample_rate: 5\n": "'audit.sample_rate' must be <= 1",
        "decision:\n  max_pulse_ms: .inf\n": "'decision.max_pulse_ms' must be a finite number",
        "web:\n  bind: localhost\n": "'web.bind' must be an IP address",
        "observability:\n  port: 70000\n": "'observability.port' must be <= 65535",
        "actuators:\n  - {type: modbus, heartbeat_s: 0}\n": "'actuators[0].heartbeat_s' must be >= 0.05",
    }
    for text, message in cases.items():
        caplog.clear()
        assert main(["config", "check", str(write(tmp_path, text))]) == 78, text
        assert message in caplog.text, (message, caplog.text)


def test_a_recipe_extends_another_config_and_states_only_what_it_changes(tmp_path):
    (tmp_path / "base.yaml").write_text("run_dir: runs/base\ntrain:\n  epochs: 30\n  lr: 0.002\n"
                                        "  augment: {vflip: 0.5, rotation_deg: 15}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "recipe.yaml").write_text("extends: ../base.yaml\ntrain:\n  epochs: 12\n"
                                                  "  augment: {vflip: 0.0}\n")
    config = load_config(tmp_path / "sub" / "recipe.yaml")
    assert (config.run_dir, config.train.epochs, config.train.lr) == ("runs/base", 12, 0.002)
    assert (config.train.augment.vflip, config.train.augment.rotation_deg) == (0.0, 15)  # merged, not replaced
    (tmp_path / "base.yaml").write_text("extends: sub/recipe.yaml\n")
    with pytest.raises(ConfigError, match="goes round in a circle"):
        load_config(tmp_path / "sub" / "recipe.yaml")
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: config file not found"):
        load_config(tmp_path / "lost.yaml")
