"""Summary statistics used everywhere numbers are reported: latency percentiles and the
confidence interval of an accuracy."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np


def percentiles(values: Sequence[float], scale: float = 1000.0) -> Dict[str, float]:
    """p50/p90/p99/max (and n, mean) of `values` times `scale` (seconds -> ms by default); {} when empty."""
    if not len(values):
        return {}
    array = np.asarray(values, np.float64) * scale
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(array.max()),
            "mean": float(array.mean()), "n": int(len(array))}


def wilson_interval(correct: int, total: int, z: float = 1.96) -> Tuple[float, float]:
    """95 % confidence interval of an accuracy measured on `total` images (Wilson score): a
    214-image test split pins accuracy down to a few points, and the report should say so."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
