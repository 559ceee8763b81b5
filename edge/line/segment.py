"""Items in a foreground mask: one segment per item, touching neighbours split.

A blob holding two touching items has a waist where they meet. The distance transform
(each pixel's distance to the belt) peaks once per item; cores above SPLIT_RATIO of the
blob's peak are the seeds, and a watershed on the distance map gives each seed its pixels.
A blob with one core is one item. Items that touch along a straight full edge show no
waist and stay one segment (the tracker then reports them as merged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np

SPLIT_RATIO = 0.5     # cores: where the distance to the belt is above this share of the blob's peak
MIN_CORE_SHARE = 0.15  # a core smaller than this share of the blob's largest one is texture, not an item
CORNER_PX = 2         # how far opening may have shaved an outline
CORNER_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * CORNER_PX + 1, 2 * CORNER_PX + 1))
SOLID = 0.93          # a blob filling this much of its convex hull is one item, whatever its cores


@dataclass(frozen=True)
class Segment:
    bbox: Tuple[int, int, int, int]   # x, y, w, h in the mask
    centre: Tuple[float, float]       # x, y of the pixels' centroid
    angle_deg: float                  # orientation of the minimum-area rectangle
    touching: bool                    # split from a blob it shared with others


def segments(mask: np.ndarray, min_area: int, raw: Optional[np.ndarray] = None) -> List[Segment]:
    """The items in `mask` (cleaned: opened against noise, closed to join an item's parts).
    `raw`, the mask before cleaning, gives the exact extents: opening shaves the corners of
    a turned item, which would shorten it and make its ejection late."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found = []
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        if area < min_area:
            continue
        outline, _ = cv2.findContours((labels[y:y + h, x:x + w] == label).astype(np.uint8), cv2.RETR_EXTERNAL,
                                      cv2.CHAIN_APPROX_SIMPLE)
        # Filled: where an item's colour is close to the belt's, its mask has holes (print, a dark
        # bottle), which would make waists inside one item and split it.
        blob = cv2.drawContours(np.zeros((h, w), np.uint8), outline, -1, 1, thickness=cv2.FILLED)
        hull = cv2.contourArea(cv2.convexHull(np.vstack(outline)))
        parts = [blob] if hull == 0 or blob.sum() / hull >= SOLID else _split(blob)
        for part in parts:
            if cv2.countNonZero(part) >= min_area:
                exact = None if raw is None else _exact(part, raw, x, y)
                found.append(_describe(part, x, y, touching=len(parts) > 1, exact=exact))
    return found


def _split(blob: np.ndarray) -> List[np.ndarray]:
    """A blob that is not as convex as one item: one part per core of its distance transform."""
    padded = cv2.copyMakeBorder(blob, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    cores = (distance >= SPLIT_RATIO * distance.max()).astype(np.uint8)
    count, core_labels, stats, _ = cv2.connectedComponentsWithStats(cores, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    keep = [i + 1 for i, size in enumerate(sizes) if size >= MIN_CORE_SHARE * sizes.max()]
    if len(keep) < 2:
        return [blob]
    markers = np.zeros(padded.shape, np.int32)
    for n, core in enumerate(keep, 1):
        markers[core_labels == core] = n + 1
    markers[padded == 0] = 1                     # the belt floods from outside
    relief = cv2.cvtColor(cv2.normalize(-distance, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.watershed(relief, markers)
    markers = markers[1:-1, 1:-1]
    return [((markers == n + 1) & (blob > 0)).astype(np.uint8) for n in range(1, len(keep) + 1)]


def _exact(part: np.ndarray, raw: np.ndarray, x0: int, y0: int) -> Tuple[int, int, int, int]:
    """Bounding box (relative to x0, y0) of the raw mask's pixels within CORNER_PX of the
    cleaned part: the part with its shaved corners back, and no noise further out."""
    h, w = part.shape
    pad = CORNER_PX
    top, left = min(pad, y0), min(pad, x0)
    window = raw[y0 - top:y0 + h + pad, x0 - left:x0 + w + pad]
    grown = cv2.copyMakeBorder(part, top, window.shape[0] - h - top, left, window.shape[1] - w - left,
                               cv2.BORDER_CONSTANT, value=0)
    grown = cv2.dilate(grown, CORNER_KERNEL)
    ex, ey, ew, eh = cv2.boundingRect(grown & window)
    return (ex - left, ey - top, ew, eh)


def _describe(part: np.ndarray, x0: int, y0: int, touching: bool, exact=None) -> Segment:
    """Box, centroid and orientation from the part's outline and moments, not from every pixel."""
    x, y, w, h = exact if exact is not None else cv2.boundingRect(part)
    moments = cv2.moments(part, binaryImage=True)
    outline, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.vstack(outline)
    angle = cv2.minAreaRect(points)[2] if len(points) >= 3 else 0.0
    return Segment((x0 + x, y0 + y, w, h), (x0 + moments["m10"] / moments["m00"], y0 + moments["m01"] / moments["m00"]),
                   float(angle), touching)
