import os

import pytest

from edge.cli import main
from tests.conftest import line_config


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


def test_fault_outputs_off_needs_no_daemon_and_never_claims_what_it_could_not_do(tmp_path, trained_run, plc, capsys):
    from pymodbus.client import ModbusTcpClient

    _, run = trained_run
    line_config(tmp_path, run, actuators=[{"type": "modbus", "port": plc.port, "timeout_s": 0.3, "retries": 0}])
    config = str(tmp_path / "line.yaml")
    for _ in range(2):  # idempotent
        client = ModbusTcpClient("127.0.0.1", port=plc.port)
        client.connect()
        client.write_coils(0, [True] * 6)
        client.close()
        assert main(["outputs-off", "--config", config]) == 0
        assert plc.coils() == [False] * 8
    assert "modbus: all outputs off" in capsys.readouterr().out
    plc.kill()
    assert main(["outputs-off", "--config", config]) == 1   # unreachable: a failure, said so
    out = capsys.readouterr().out
    assert "all outputs off" not in out
