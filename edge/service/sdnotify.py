"""sd_notify(3) without libsystemd: READY=1, WATCHDOG=1, STOPPING=1, STATUS=... ."""
from __future__ import annotations

import os
import socket
from typing import Optional


class Notifier:
    def __init__(self):
        address = os.environ.get("NOTIFY_SOCKET")
        self.address: Optional[str] = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC")
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: Optional[float] = int(usec) / 2e6 if usec and usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self.address)
                sock.sendall(message.encode())
            except OSError:
                return False
        return True

    def ready(self, status: str = "sorting") -> bool:
        return self.notify(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
