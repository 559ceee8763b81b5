"""Summary statistics used everywhere numbers are reported: latency percentiles, the
confidence interval of an accuracy, and the paired test of two models on the same images."""
from __future__ import annotations

import math
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


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for two models scored on the same images: `only_a` images
    only model A got right, `only_b` only B. Images both got right or wrong say nothing about
    which is better; under "equally good" each discordant image is a fair coin."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)
