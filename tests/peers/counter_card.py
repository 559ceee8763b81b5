"""A PLC's high-speed counter card for the tests: counts the simulated belt's encoder in its own
process, as the card counts pulses beside the line's computer, and keeps the count in two
holding registers of the PLC (high word first), written over Modbus TCP every millisecond.

usage: python counter_card.py PORT ADDRESS SPEED_MM_S VARIATION PERIOD_S MM_PER_COUNT
Prints "ready" once connected, then reads the belt's start (time.monotonic()) from stdin and
counts from it until killed.
"""
import sys
import time
from pathlib import Path

from pymodbus.client import ModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edge.line.simulator import BeltMotion  # noqa: E402  (the belt the simulator moves)


def main() -> None:
    port, address = int(sys.argv[1]), int(sys.argv[2])
    motion = BeltMotion(*map(float, sys.argv[3:6]))
    mm_per_count = float(sys.argv[6])
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=1)
    client.connect()
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while True:
        count = int(motion.position(max(0.0, time.monotonic() - start)) / mm_per_count) & 0xFFFFFFFF
        client.write_registers(address, [count >> 16, count & 0xFFFF])
        time.sleep(0.001)


if __name__ == "__main__":
    main()
