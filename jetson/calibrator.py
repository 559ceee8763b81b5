"""Implicit INT8 for TensorRT 8.x/10.x from the cache `scrapsort calibrate` wrote.

TensorRT asks the calibrator for its cache first; given one, it never asks for batches, so
no images or CUDA buffers are needed on the device.
"""
from __future__ import annotations

from pathlib import Path

from edge.errors import ModelError


def cache_calibrator(trt, cache: Path):
    if not cache.is_file():
        raise ModelError(f"{cache}: no calibration cache; run `scrapsort calibrate` (make calibrate) first")

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None  # everything comes from the cache

        def read_calibration_cache(self):
            return cache.read_bytes()

        def write_calibration_cache(self, data):
            return None

    return CacheCalibrator()
