"""Items followed across frames by belt motion, in both directions of the belt plane.

An item's belt coordinate (s = belt position - its world x) and its position across the
belt (y) do not change while it rides the belt, so a detection in a new frame belongs to
the track whose extent it overlaps. Every track ends either decided (once) or with the
reason it was not: nothing that entered the view goes unaccounted for.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Optional, Tuple

LOST_AFTER_FRAMES = 3   # unseen this many frames in a row: the item has left the view
FRAGMENT_SHARE = 0.5    # a new detection this much inside a decided item is a piece of it


@dataclass
class Detection:
    s_mm: float          # belt coordinate of the centre
    y_mm: float          # across the belt, from the camera's centre line
    length_mm: float     # extent along the belt
    width_mm: float      # extent across the belt
    whole: bool          # fully in view along the belt (not cut by the view's edges)
    spanning: bool       # cut by both edges: longer than the view
    angle_deg: float = 0.0

    def span(self) -> Tuple[float, float, float, float]:
        return (self.s_mm - self.length_mm / 2, self.s_mm + self.length_mm / 2,
                self.y_mm - self.width_mm / 2, self.y_mm + self.width_mm / 2)


@dataclass
class Track:
    id: str
    last: Detection
    seen_whole: bool = False
    spanning: bool = False
    merged: bool = False
    decided: bool = False
    missing: int = 0

    def reason_undecided(self) -> str:
        if self.spanning:
            return "too long for the view"
        if self.merged:
            return "merged"
        return "never whole at the trigger line"


def overlap(a: Detection, b: Detection) -> float:
    """Overlapping area (mm^2) of two detections' extents; 0 when apart."""
    a0, a1, ay0, ay1 = a.span()
    b0, b1, by0, by1 = b.span()
    return max(0.0, min(a1, b1) - max(a0, b0)) * max(0.0, min(ay1, by1) - max(ay0, by0))


class Tracker:
    def __init__(self):
        self.tracks: List[Track] = []
        self._ids = itertools.count(1)

    def update(self, detections: List[Detection], exit_s: Optional[float] = None
               ) -> Tuple[List[Tuple[Track, Detection]], List[Track], List[Track]]:
        """Match this frame's detections to tracks. Returns the (track, detection) pairs, the tracks
        this frame started (items entering the view) and those that ended (unseen for
        LOST_AFTER_FRAMES frames). `exit_s`, the belt coordinate at the view's downstream edge,
        keeps the tracks of items still in view that are hidden: decided items (a piece of one
        seen later is theirs) and items inside a neighbour's blob (theirs again when it parts)."""
        pairs, started, claimed = [], [], set()
        previous = {id(t): t.last for t in self.tracks}   # extents before this frame moved them
        for detection in sorted(detections, key=lambda d: -d.length_mm * d.width_mm):
            candidates = [t for t in self.tracks if id(t) not in claimed and overlap(t.last, detection) > 0]
            track = max(candidates, key=lambda t: overlap(t.last, detection), default=None)
            if track is None and self._fragment_of_decided(detection, claimed, previous):
                continue  # a decided item seen in two pieces this frame: not a new item
            if track is None:
                track = Track(f"{next(self._ids):06d}", detection)
                self.tracks.append(track)
                started.append(track)
            for other in candidates:  # one detection over several items: they have run together
                if other is not track and not other.decided:
                    other.merged = True
            claimed.add(id(track))
            self._follow(track, detection)
            pairs.append((track, detection))
        ended = []
        for track in self.tracks:
            if id(track) in claimed:
                continue
            track.missing += 1
            in_view = exit_s is not None and track.last.span()[1] >= exit_s   # its upstream end
            if in_view and (track.decided or any(overlap(track.last, d) > 0 for d in detections)):
                continue  # hidden, not gone
            if track.missing >= LOST_AFTER_FRAMES:
                ended.append(track)
        self.tracks = [t for t in self.tracks if t not in ended]
        return pairs, started, ended

    def _fragment_of_decided(self, detection: Detection, claimed, previous) -> bool:
        """Mostly inside a decided item that another detection of this frame already follows."""
        area = detection.length_mm * detection.width_mm
        return any(id(t) in claimed and t.decided and overlap(previous.get(id(t), t.last), detection)
                   >= FRAGMENT_SHARE * area for t in self.tracks)

    @staticmethod
    def _follow(track: Track, detection: Detection) -> None:
        track.missing = 0
        track.spanning |= detection.spanning
        if detection.whole or not track.seen_whole:
            track.last = detection if detection.whole else _union(track.last, detection)
        track.seen_whole |= detection.whole


def _union(a: Detection, b: Detection) -> Detection:
    a0, a1, ay0, ay1 = a.span()
    b0, b1, by0, by1 = b.span()
    s0, s1, y0, y1 = min(a0, b0), max(a1, b1), min(ay0, by0), max(ay1, by1)
    return Detection((s0 + s1) / 2, (y0 + y1) / 2, s1 - s0, y1 - y0, False, a.spanning or b.spanning)
