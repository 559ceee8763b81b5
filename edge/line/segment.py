"""Items in a foreground mask: one segment per item, touching neighbours cut apart.

Loose items are convex or nearly so; where two touch or one lies over the other, the blob's
outline has a notch on each side of the contact (the hull's deepest defects). The blob is cut
along the chord between the pair of deep notches that gives the shortest cut for their depth,
and each side is cut again while it is still less convex than one item (three abreast). The
chord joins the notches, but the items meet along the upper one's outline (its corner can
reach well past the chord): the pixels near the chord go to the side the image joins them to.
A blob filling SOLID of its convex hull is one item; a blob cut by the view's edge is not cut
(its outline changes as it enters or leaves). Two items lying edge to edge with parallel
sides and ends level leave no notch and stay one segment (the tracker reports them merged).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import List, Optional, Tuple

import cv2
import numpy as np

SOLID = 0.93           # a blob filling this much of its convex hull is one item
NOTCH_DEPTH = 0.08     # a hull defect this deep (share of the blob's sqrt(area)) is where two items meet
MIN_PART = 0.15        # neither side of a cut may hold less than this share of the blob
CUT_INSIDE = 0.9       # share of a cut's length that must run through the blob (not across the belt)
MAX_CUTS = 3           # cut depth: up to 2**3 items in one blob
MAX_NOTCHES = 8        # the deepest notches tried (a ragged outline has many shallow ones): 28 chords at most
SETTLE_BAND = 0.2      # pixels nearer the chord than this share of sqrt(area) are settled by the image
CORNER_PX = 2          # how far opening may have shaved an outline
CORNER_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * CORNER_PX + 1, 2 * CORNER_PX + 1))


@dataclass(frozen=True)
class Segment:
    bbox: Tuple[int, int, int, int]   # x, y, w, h in the mask
    centre: Tuple[float, float]       # x, y of the pixels' centroid
    angle_deg: float                  # orientation of the minimum-area rectangle
    touching: bool                    # split from a blob it shared with others


def segments(mask: np.ndarray, min_area: int, raw: Optional[np.ndarray] = None,
             image: Optional[np.ndarray] = None) -> List[Segment]:
    """The items in `mask` (cleaned: opened against noise, closed to join an item's parts).
    `raw`, the mask before cleaning, gives the exact extents: opening shaves the corners of
    a turned item, which would shorten it and make its ejection late. `image`, the frame under
    the mask, settles where cut items meet."""
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
        # Seen in part at the view's upstream or downstream edge: its notches come and go from
        # frame to frame, and each cut would be an item entering. It is cut once in view.
        in_part = x == 0 or x + w == mask.shape[1]
        parts = [blob] if in_part else _cut(blob, None if image is None else image[y:y + h, x:x + w])
        for part in parts:
            if cv2.countNonZero(part) >= min_area:
                exact = None if raw is None else _exact(part, raw, x, y)
                found.append(_describe(part, x, y, touching=len(parts) > 1, exact=exact))
    return found


def _cut(blob: np.ndarray, image: Optional[np.ndarray] = None, levels: int = MAX_CUTS) -> List[np.ndarray]:
    """The blob in one part per item: cut between two deep notches of its outline, sides cut again."""
    if levels == 0:
        return [blob]
    contour = max(cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea,
                  default=None)
    if contour is None or len(contour) < 5:
        return [blob]
    area = float(cv2.countNonZero(blob))
    if area >= SOLID * cv2.contourArea(cv2.convexHull(contour)):
        return [blob]   # as convex as one item
    found = _best_cut(blob, contour, area)
    if found is None:
        return [blob]
    sides, chord = found
    if image is not None:
        sides = _settle(blob, sides, chord, image, SETTLE_BAND * np.sqrt(area))
    return [part for side in sides for part in _cut(side, image, levels - 1)]


def _settle(blob: np.ndarray, sides: List[np.ndarray], chord, image: np.ndarray, band: float) -> List[np.ndarray]:
    """The sides with the pixels within `band` of the chord given to the side the image joins
    them to: a watershed on the colour image, flooded from each side's pixels further away."""
    line = cv2.line(np.full(blob.shape, 255, np.uint8), chord[0], chord[1], 0, 1)
    near = (cv2.distanceTransform(line, cv2.DIST_L2, 3) < band) & (blob > 0)
    markers = np.ones(blob.shape, np.int32)            # 1: the belt around the blob
    for n, side in enumerate(sides):
        markers[(side > 0) & ~near] = n + 2
    markers[near] = 0
    colour = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    cv2.watershed(np.ascontiguousarray(colour), markers)
    # Watershed lines (-1) and pixels flooded from the belt stay with the side they were on.
    return [(((markers == n + 2) | ((markers < 2) & (side > 0))) & (blob > 0)).astype(np.uint8)
            for n, side in enumerate(sides)]


def _notches(contour: np.ndarray, area: float) -> List[Tuple[Tuple[int, int], float]]:
    """(point, depth px) of the hull defects deeper than NOTCH_DEPTH of the blob's size."""
    try:
        defects = cv2.convexityDefects(contour, cv2.convexHull(contour, returnPoints=False))
    except cv2.error:   # a self-touching outline: no defects to read
        return []
    if defects is None:
        return []
    least = NOTCH_DEPTH * np.sqrt(area)
    return [((int(contour[far][0][0]), int(contour[far][0][1])), depth / 256.0)
            for _, _, far, depth in defects.reshape(-1, 4) if depth / 256.0 >= least]


def _best_cut(blob: np.ndarray, contour: np.ndarray, area: float):
    """(the two sides, the chord) of the shortest cut for its notches' depth that runs through
    the blob and leaves no side under MIN_PART; None when no pair of notches gives one."""
    notches = sorted(_notches(contour, area), key=lambda notch: notch[1])[-MAX_NOTCHES:]
    chords = sorted((float(np.hypot(a[0] - b[0], a[1] - b[1])) / (depth_a + depth_b), a, b)
                    for (a, depth_a), (b, depth_b) in combinations(notches, 2) if a != b)
    for _, a, b in chords:   # the best first: the first that cuts the blob in two is the cut
        sides = _sides(blob, a, b, area)
        if sides is not None:
            return sides, (a, b)
    return None


def _sides(blob: np.ndarray, a, b, area: float) -> Optional[List[np.ndarray]]:
    """The blob's two largest parts with the chord a-b taken out, if the chord runs through the
    blob and neither part is under MIN_PART."""
    steps = int(np.hypot(a[0] - b[0], a[1] - b[1])) + 1
    xs = np.linspace(a[0], b[0], steps).round().astype(int)
    ys = np.linspace(a[1], b[1], steps).round().astype(int)
    if blob[ys, xs].mean() < CUT_INSIDE:
        return None
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.line(blob.copy(), a, b, 0, 2), connectivity=4)
    if count < 3:
        return None
    largest = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2] + 1
    if stats[largest[1], cv2.CC_STAT_AREA] < MIN_PART * area:
        return None
    return [(labels == k).astype(np.uint8) for k in largest]


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
