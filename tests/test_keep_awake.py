"""runtime.keep_awake: the idle-priority spinners that keep the cores awake between frames
take no time from the line (SCHED_IDLE) and never outlive it, even a killed one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.service.awake import CoresAwake


def spinners_of(parent: int):
    """Pids of the spinner processes whose parent is `parent`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue   # ended meanwhile
        if int(fields[1]) == parent and b"SCHED_IDLE" in cmdline:
            found.append(int(stat.parent.name))
    return found


def wait_for(condition, timeout: float = 5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_one_spinner_per_core_at_idle_priority_and_none_after_stop():
    awake = CoresAwake(cores=2)
    awake.start()
    try:
        pids = [p.pid for p in awake.spinners]
        assert sorted(spinners_of(os.getpid())) == sorted(pids)
        # each lowers itself to SCHED_IDLE first thing: the scheduler preempts it for any other work
        assert wait_for(lambda: all(os.sched_getscheduler(pid) == os.SCHED_IDLE for pid in pids))
    finally:
        awake.stop()
    assert spinners_of(os.getpid()) == []


def test_fault_spinners_stop_when_the_daemon_is_killed():
    """SIGKILL gives the daemon no chance to stop its spinners: each notices it has lost its
    parent and ends, instead of keeping two cores busy until the next reboot."""
    daemon = subprocess.Popen([sys.executable, "-c", "from edge.service.awake import CoresAwake\n"
                               "import time\nawake = CoresAwake(cores=2)\nawake.start()\n"
                               "print(' '.join(str(p.pid) for p in awake.spinners), flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        pids = [int(p) for p in daemon.stdout.readline().split()]
        assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=5)
        assert wait_for(lambda: not any(_running(pid) for pid in pids), timeout=3.0), pids
    finally:
        daemon.kill()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie is reaped by init, but may linger a moment)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
