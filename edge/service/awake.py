"""Cores kept out of their idle state between frames (`runtime.keep_awake`).

A camera-paced line works ~10 ms of every 33 ms frame and leaves the cores idle for the rest.
A core woken from idle runs the next inference slower: on a virtual machine its vCPU was
handed back to the host and must be scheduled again; on bare metal a deep C-state flushed its
caches. Measured on a 2-core VM (`scrapsort bench` runs the line both ways): in the loop the
model took 1.5-1.9x as long as back to back, 1.1-1.2x with the cores kept awake.

One process per core spins at SCHED_IDLE, the lowest priority Linux has: the scheduler runs it
only when nothing else wants that core and preempts it the moment anything does, so it takes
no time from the line, only the cores' idle power (it shows as 100 % CPU in top). A spinner
whose parent is gone stops within a second, so nothing outlives a killed daemon. Where the
platform has a proper knob, prefer it: `jetson_clocks` on a Jetson, `idle=poll` or a
cpu_dma_latency request on an x86 host.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import List, Optional

log = logging.getLogger(__name__)

SPIN = """
import os, sys
parent = int(sys.argv[1])
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    os.nice(19)
while os.getppid() == parent:  # re-parented: the daemon is gone
    for _ in range(200000):
        pass
"""


class CoresAwake:
    """Spinners at idle priority, one per core, while the line runs; stop() ends them."""

    def __init__(self, cores: Optional[int] = None):
        self.cores = cores or os.cpu_count() or 1
        self.spinners: List[subprocess.Popen] = []

    def start(self) -> None:
        for _ in range(self.cores):
            self.spinners.append(subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())],
                                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL, close_fds=True))
        log.info("runtime.keep_awake: %d idle-priority spinner(s) keep the cores awake between frames", self.cores)

    def stop(self) -> None:
        for spinner in self.spinners:
            spinner.kill()
        for spinner in self.spinners:
            spinner.wait(timeout=5)
        self.spinners = []
