"""Implicit INT8 for TensorRT 8.x/10.x from the cache `scrapsort calibrate` wrote.

TensorRT asks the calibrator for its cache first; given one, it never asks for batches, so
no images or CUDA buffers are needed on the device. It only takes a cache whose header names
its own version, so the header is written for the TensorRT that builds (the scales below it
do not change between versions).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from edge.errors import ModelError

log = logging.getLogger(__name__)
HEADER = re.compile(rb"TRT-(\d+)-EntropyCalibration2")


def version_code(version: str) -> int:
    """NV_TENSORRT_VERSION: '8.5.2' -> 8502 (x1000/x100 on 8.x); '10.3.0' -> 100300 (x10000/x100 from 10)."""
    major, minor, patch = (int(p) for p in (version.split(".") + ["0", "0"])[:3])
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def header_for(version: str) -> str:
    return f"TRT-{version_code(version)}-EntropyCalibration2"


def cache_for(path: Path, trt_version: str) -> bytes:
    """The cache at `path` with its header for `trt_version`; ModelError if it is not a cache."""
    if not path.is_file():
        raise ModelError(f"{path}: no calibration cache; run `scrapsort calibrate` (make calibrate) first")
    header, _, body = path.read_bytes().partition(b"\n")
    found = HEADER.fullmatch(header.strip())
    if not found or not body.strip():
        raise ModelError(f"{path}: not a TensorRT entropy calibration cache (header {header[:40]!r}); "
                         f"write it again with `scrapsort calibrate` (make calibrate)")
    wanted = header_for(trt_version)
    if header.strip().decode() != wanted:
        log.info("%s: header %s rewritten as %s for TensorRT %s", path, header.decode(), wanted, trt_version)
    return wanted.encode() + b"\n" + body


def cache_calibrator(trt, cache: Path):
    data = cache_for(cache, trt.__version__)

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None  # everything comes from the cache

        def read_calibration_cache(self):
            return data

        def write_calibration_cache(self, data):
            return None

    return CacheCalibrator()
