import os

import pytest

from edge.cli import main
from tests.test_daemon import line_config


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the refusal seen when started as root")
def test_daemon_refuses_root_unless_allowed(tmp_path, trained_run, caplog):
    _, run = trained_run
    line_config(tmp_path, run, runtime={"allow_root": False})
    assert main(["run", "--config", str(tmp_path / "line.yaml")]) == 78
    assert "refusing to run as root" in caplog.text


def test_daemon_refuses_config_writable_by_others(tmp_path, trained_run, caplog):
    _, run = trained_run
    line_config(tmp_path, run)
    os.chmod(tmp_path / "line.yaml", 0o666)
    assert main(["run", "--config", str(tmp_path / "line.yaml")]) == 78
    assert "writable by group/others" in caplog.text and "chmod go-w" in caplog.text


def test_outputs_off_needs_no_daemon(tmp_path, trained_run, capsys):
    _, run = trained_run
    line_config(tmp_path, run)
    assert main(["outputs-off", "--config", str(tmp_path / "line.yaml")]) == 0
    assert main(["outputs-off", "--config", str(tmp_path / "line.yaml")]) == 0  # idempotent
    assert "all outputs off" in capsys.readouterr().out
