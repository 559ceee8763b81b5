"""Measures when the whole machine stopped running user code: a process at the highest
SCHED_FIFO priority that sleeps 1 ms at a time, so no other process or thread (the tests' own
load, the line's real-time threads included) can keep it waiting; a wake-up that comes late
means the kernel or the hypervisor held every thread back (a VM descheduled by its host, for
example). Each such span is appended to FILE as "start end"
(time.monotonic(), the clock every process here shares).

usage: python freeze_gauge.py FILE
Stops when its parent does. Without the right to real-time priority it records nothing, so it
excuses nothing.
"""
import os
import sys
import time

TICK_S = 0.001
LATE_S = 0.001  # a wake-up later than this past the tick counts as a freeze


def main() -> None:
    parent = os.getppid()
    with open(sys.argv[1], "a", buffering=1) as out:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(os.sched_get_priority_max(os.SCHED_FIFO)))
        except (AttributeError, OSError) as exc:
            print(f"# no real-time priority ({exc}): nothing measured", file=out)
            return
        while os.getppid() == parent:
            due = time.monotonic() + TICK_S
            time.sleep(TICK_S)
            woke = time.monotonic()
            if woke - due > LATE_S:
                out.write(f"{due:.6f} {woke:.6f}\n")  # written after the measurement: not counted in it


if __name__ == "__main__":
    main()
