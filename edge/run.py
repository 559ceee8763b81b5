"""`scrapsort run`: start the line from its config, sort until stopped, always end with outputs off."""
from __future__ import annotations

import json
import logging
import signal
import threading
from urllib.parse import urlparse

from edge.config import Config
from edge.daemon import Sorter
from edge.report import format_summary, summarize

log = logging.getLogger(__name__)


def run_line(config: Config, stop: threading.Event = None) -> dict:
    simulator = None
    if urlparse(config.source.uri).scheme == "sim":
        from edge.simulator import SimulatedConveyor

        simulator = SimulatedConveyor(config)
    stop = stop or threading.Event()
    sorter = Sorter(config, simulator=simulator)
    previous = _install_signal_handlers(stop)
    try:
        sorter.start()
        log.info("sorting: model %s, source %s", sorter.model.path, config.source.uri)
        sorter.run(stop)
    finally:
        sorter.shutdown()  # outputs off on every way out, errors included
        _restore(previous)
    summary = summarize(sorter, simulator)
    config.run_path.mkdir(parents=True, exist_ok=True)
    (config.run_path / "run_summary.json").write_text(json.dumps(summary, indent=1))
    print(format_summary(summary))
    return summary


def _install_signal_handlers(stop: threading.Event):
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = lambda signum, frame: stop.set()  # noqa: E731
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(previous) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)
