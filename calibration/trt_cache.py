"""Legacy TensorRT INT8 calibration cache (implicit quantization, TensorRT 8.x / 10.x).

Text format read by IInt8Calibrator.read_calibration_cache: a header line
`TRT-<version code>-EntropyCalibration2`, then one `tensor: <hex>` line per tensor, where
<hex> is the IEEE-754 float32 bits of the scale amax / 127. `scrapsort build` rewrites the
header for the TensorRT that builds (jetson/calibrator.py).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from jetson.calibrator import header_for


def write_cache(ranges: Dict[str, Tuple[float, float]], path: Path, trt_version: str) -> int:
    """Write the cache for tensors with a usable range; returns how many were written."""
    lines = [header_for(trt_version)]
    for name in sorted(ranges):
        low, high = ranges[name]
        amax = float(np.max(np.abs(np.concatenate([np.ravel(low), np.ravel(high)]))))
        if not np.isfinite(amax) or amax <= 0:
            continue
        lines.append(f"{name}: {struct.pack('>f', amax / 127.0).hex()}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def read_cache(path: Path) -> Tuple[str, Dict[str, float]]:
    """(header, tensor -> scale); the inverse of write_cache, used to check it."""
    header, *rows = Path(path).read_text().splitlines()
    scales = {}
    for row in rows:
        name, _, hexbits = row.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(hexbits))[0]
    return header, scales
