"""Durable file writes: a reader sees the old file or the whole new one, never a part."""
from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write(target: Path, data: bytes) -> None:
    """Temp file beside the target, fsync, rename over it, fsync the directory (so the
    rename itself survives a power cut)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # writers never share one
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
