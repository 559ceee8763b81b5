"""The units as systemd itself reads them (systemd-analyze), with the installed entry point."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@pytest.fixture
def units(tmp_path):
    entry = Path(sys.executable).with_name("scrapsort")
    for unit in UNITS.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/scrapsort/venv/bin/scrapsort", str(entry)))
    return tmp_path


@needs_systemd
def test_units_verify(units):
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", "scrapsort.service", "scrapsort-engine.service"],
                            cwd=units, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@needs_systemd
def test_service_is_hardened(units):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=40", str(units / "scrapsort.service")],
                            capture_output=True, text=True)
    assert "Overall exposure level" in result.stdout, result.stderr
    score = float(result.stdout.split("Overall exposure level for scrapsort.service:")[1].split()[0])
    assert score <= 4.0, result.stdout


def test_every_exit_code_that_a_restart_cannot_fix_is_listed():
    from edge.errors import no_restart_exit_codes

    unit = (UNITS / "scrapsort.service").read_text()
    listed = next(line for line in unit.splitlines() if line.startswith("RestartPreventExitStatus="))
    assert set(map(int, listed.split("=", 1)[1].split())) == no_restart_exit_codes() == {66, 69, 78}


def test_service_contract():
    unit = (UNITS / "scrapsort.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RestartPreventExitStatus=78",
                 "StartLimitBurst=", "outputs-off", "User=scrapsort", "SupplementaryGroups=video gpio",
                 "StateDirectory=scrapsort", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "NoNewPrivileges=yes", "Requires=scrapsort-engine.service"):
        assert line in unit, line
    assert "\nPrivateDevices=" not in unit  # breaks CUDA on Jetson
    assert "--if-needed" in (UNITS / "scrapsort-engine.service").read_text()


def test_fault_no_option_that_hides_devices_on_jetpack_systemd():
    """systemd 245/249 (JetPack 5/6) turn ProtectClock= into a DeviceAllow list, and
    PrivateDevices=/DevicePolicy= do the same on every version: camera, GPIO and CUDA
    device nodes would vanish for the service."""
    unit = (UNITS / "scrapsort.service").read_text()
    settings = [line.split("=", 1)[0] for line in unit.splitlines() if line and not line.startswith("#")]
    assert not {"ProtectClock", "PrivateDevices", "DevicePolicy", "DeviceAllow"} & set(settings)
    assert "SystemCallFilter=@system-service" in unit   # clock changes stay refused (@clock is not in it)
