"""`scrapsort run`: start the line from its config, sort until stopped, always end with outputs off."""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import threading
from pathlib import Path
from urllib.parse import urlparse

from edge.config import Config
from edge.service.sorter import Sorter
from edge.errors import ConfigError
from edge.service.report import format_summary, summarize

log = logging.getLogger(__name__)


def check_security(config: Config) -> None:
    """Refuse root (unless allowed) and a config file others could rewrite."""
    if os.geteuid() == 0 and not config.runtime.allow_root:
        raise ConfigError(f"{config.source_file}: refusing to run as root; run as the scrapsort service user "
                          f"(make install creates it) or set runtime.allow_root: true deliberately")
    path = Path(config.source_file)
    if path.is_file() and path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path}: writable by group/others (mode {stat.S_IMODE(path.stat().st_mode):o}); "
                          f"anyone could redirect the valves: chmod go-w {path}")


def run_line(config: Config, stop: threading.Event = None) -> dict:
    check_security(config)
    simulator = None
    if urlparse(config.source.uri).scheme == "sim":
        from edge.line.simulator import SimulatedConveyor

        simulator = SimulatedConveyor(config)
    stop = stop or threading.Event()
    sorter = Sorter.from_config(config, simulator=simulator)
    previous = _install_signal_handlers(stop, sorter.reload_requested)
    log.info("sorting: model %s, source %s", sorter.model.path, config.source.uri)
    try:
        sorter.run_to_end(stop)  # outputs off on every way out, errors included
    finally:
        _restore(previous)
    summary = summarize(sorter, simulator)
    config.run_path.mkdir(parents=True, exist_ok=True)
    (config.run_path / "run_summary.json").write_text(json.dumps(summary, indent=1))
    print(format_summary(summary))
    return summary


def _install_signal_handlers(stop: threading.Event, reload: threading.Event):
    """SIGTERM/SIGINT stop the line; SIGHUP (systemctl reload) asks for the configured model.
    The handlers only set events: the loop acts on them (a handler must never wait for a lock)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    stopping = lambda signum, frame: stop.set()  # noqa: E731
    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
    return previous


def _restore(previous) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)


def outputs_off(config: Config) -> int:
    """Drive every configured output off, without a running daemon (systemd ExecStopPost).
    Exit 1 unless every driver confirmed it."""
    from edge.plant.base import all_off, open_actuators

    actuators = open_actuators(config.actuators, config.decision.max_pulse_ms / 1000)
    failures = all_off(actuators)
    for actuator in actuators:
        actuator.close()
        if not any(f.startswith(f"{actuator.name}:") for f in failures):
            print(f"{actuator.name}: all outputs off")
    return 1 if failures else 0
