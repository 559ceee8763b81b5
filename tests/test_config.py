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
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.classes and config.source_file == str(path)


def test_defaults_fill_missing_sections(tmp_path):
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
