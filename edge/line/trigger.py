"""When is an item under the camera? Vision (background subtraction) or a photo-eye.

Each trigger turns frames into Observations: the item's crop, where it was (world x in mm
from the camera centre along the belt, y across it), its extent, and where the belt was
when the frame was taken. The vision trigger finds every item in the frame (touching ones
split, edge.line.segment) and follows each by belt motion (edge.line.track), so items side
by side or close in line are classified once each, and every item that entered the view
ends decided or counted unclassified with its reason.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np

from edge.line.belt import BeltTracker
from edge.config import Config
from edge.line.segment import Segment, segments
from edge.line.sources import Frame
from edge.line.track import Detection, Tracker


log = logging.getLogger(__name__)
BACKGROUND_ADAPT = 0.01   # per frame: about 3 s to follow a lighting change at 30 fps
GHOST_TRAVEL_VIEWS = 2.0  # foreground this many view lengths of belt travel: no item rides that long
GHOST_GRID = 4            # ghosts are watched on every 4th pixel in both directions
NOISE_PERCENTILE = 99.9   # of the empty belt's stray from its median: its noise level
QUIET_SHARE = 0.1         # of the view that no item crossed while learning: enough to measure the noise


@dataclass
class Observation:
    item_id: str
    crop: np.ndarray          # BGR, the item with a little belt around it
    bbox: tuple               # x, y, w, h in the frame
    x_mm: float               # item centre, world coordinate at capture (downstream positive)
    belt_mm: float            # belt position at capture
    t_capture: float
    encoder: Optional[int]
    frame_seq: int
    y_mm: float = 0.0         # item centre across the belt, from the camera's centre line
    length_mm: float = 0.0    # extent along the belt
    width_mm: float = 0.0     # extent across the belt
    angle_deg: float = 0.0


class _SeenItems:
    """Belt coordinates of items already classified (one decision per item)."""

    def __init__(self, min_gap_mm: float):
        self.min_gap, self.coords, self.count = min_gap_mm, [], 0

    def new(self, coordinate: float) -> Optional[str]:
        if any(abs(coordinate - c) < self.min_gap for c in self.coords):
            return None
        self.coords = self.coords[-64:] + [coordinate]
        self.count += 1
        return f"{self.count:06d}"


class Trigger:
    """Turns frames into Observations; items it sees but cannot observe are kept, with the
    reason, for take_unclassified(), so no item leaves the view without a trace, and the
    items that entered the view are counted for take_entered()."""

    def __init__(self):
        self._unclassified: List[str] = []
        self._entered = 0
        self._lock = threading.Lock()

    def _lost(self, reason: str) -> None:
        with self._lock:
            self._unclassified.append(reason)

    def _enter(self, count: int = 1) -> None:
        with self._lock:
            self._entered += count

    def predicted(self, frame: Frame) -> List[Observation]:
        """Items known from earlier frames to be at the trigger line in this one, observed before
        the frame is searched (VisionTrigger); the others find every item in observe()."""
        return []

    def take_unclassified(self) -> List[str]:
        with self._lock:
            taken, self._unclassified = self._unclassified, []
        return taken

    def take_entered(self) -> int:
        with self._lock:
            taken, self._entered = self._entered, 0
        return taken

    def close(self) -> None:
        pass


class VisionTrigger(Trigger):
    def __init__(self, config: Config, belt: BeltTracker):
        super().__init__()
        self.cfg, self.line, self.belt = config.trigger, config.line, belt
        self.tracker = Tracker()
        self.background: Optional[np.ndarray] = None
        self._learned, self._empty_frames = 0, []
        self.faint_levels = self.cfg.faint_levels   # raised above the belt's noise once it is learned
        self._dwell_mm: Optional[np.ndarray] = None   # belt travel each watched pixel has stayed foreground
        self._last_belt_mm = 0.0
        # 3x3: removes single-pixel sensor noise (the item's exact extent comes from the raw mask).
        self.kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        join = max(3, int(self.cfg.join_mm / self.line.mm_per_px) | 1)
        self.join_kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (join, join))
        reach = 2 * int(round(self.cfg.faint_reach_mm / self.line.mm_per_px)) + 1
        self.faint_kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (reach, reach))

    def _roi(self, image: np.ndarray):
        h, w = image.shape[:2]
        x, y, rw, rh = self.cfg.roi
        return int(x * w), int(y * h), max(int(rw * w), 1), max(int(rh * h), 1)

    def observe(self, frame: Frame) -> List[Observation]:
        x0, y0, rw, rh = self._roi(frame.image)
        belt_mm = self.belt.position_at_capture(frame.t_capture, frame.encoder)
        roi = frame.image[y0:y0 + rh, x0:x0 + rw]
        masks = self._foreground(roi, belt_mm)
        if masks is None:
            return []
        found = segments(masks[0], int(self.cfg.min_area * rw * rh), raw=masks[1], image=roi)
        detections = [self._detection(seg, frame, (x0, y0, rw, rh), belt_mm) for seg in found]
        segment_of = {id(d): seg for d, seg in zip(detections, found)}
        exit_mm = (x0 + rw - frame.image.shape[1] / 2) * self.line.mm_per_px   # the view's downstream edge
        pairs, started, ended = self.tracker.update(detections, exit_s=belt_mm - exit_mm)
        if started:
            self._enter(len(started))
        for track in ended:
            if not track.decided:
                self._lost(track.reason_undecided())
        observations = []
        for track, detection in pairs:
            seg = segment_of[id(detection)]
            if track.decided or not detection.whole or seg.centre[0] < rw / 2:
                continue  # classify at the trigger line (ROI centre), the whole item in view, once
            track.decided = True
            bx, by, bw, bh = seg.bbox
            observations.append(self._observation(track.id, frame, (x0 + bx, y0 + by, bw, bh), belt_mm, detection))
        # Several items in one frame: classified one after another, the one furthest downstream
        # (the earliest ejection) first.
        return sorted(observations, key=lambda o: -o.x_mm)

    def predicted(self, frame: Frame) -> List[Observation]:
        """The items seen whole in the last frame whose centre has now reached the trigger line,
        cropped where the belt has carried them: classified while this frame is still being
        searched, so finding items adds nothing to the time from capture to decision."""
        if self._learned < self.cfg.learn_frames:
            return []
        x0, y0, rw, rh = self._roi(frame.image)
        height, width = frame.image.shape[:2]
        belt_mm = self.belt.position_at_capture(frame.t_capture, frame.encoder)
        margin, scale = self.cfg.edge_margin_px, self.line.mm_per_px
        observations = []
        for track in self.tracker.tracks:
            d = track.last
            if track.decided or track.missing or not track.seen_whole or track.spanning:
                continue
            left = width / 2 + (belt_mm - d.s_mm - d.length_mm / 2) / scale
            top = height / 2 + (d.y_mm - d.width_mm / 2) / scale
            box = (int(round(left)), int(round(top)), int(round(d.length_mm / scale)), int(round(d.width_mm / scale)))
            centre = box[0] + box[2] / 2 - x0
            if centre < rw / 2 or box[0] - x0 <= margin or box[0] + box[2] >= x0 + rw - margin:
                continue  # not at the trigger line yet, or no longer whole in view: observe() decides
            track.decided = True
            observations.append(self._observation(track.id, frame, box, belt_mm, d))
        return sorted(observations, key=lambda o: -o.x_mm)

    def _foreground(self, roi: np.ndarray, belt_mm: float) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(cleaned mask, raw mask) of what differs from the empty belt; None while learning it."""
        if self._learned < self.cfg.learn_frames:  # the empty belt: the median, so an item passing
            self._empty_frames.append(roi.copy())   # during fewer than half the frames leaves no trace
            self._learned += 1
            if self._learned == self.cfg.learn_frames:
                frames = np.stack(self._empty_frames)
                self.background = np.median(frames, axis=0).astype(np.float32)
                self.faint_levels = self._above_noise(frames, self.background)
                self._empty_frames = []
            return None
        # The largest difference of any colour channel: a brown box or a blue print can be as
        # bright as a grey belt, and a grey difference would cut notches into its outline.
        # (In 8 bits, channel by channel with OpenCV: a numpy max over the channel axis costs 30x.)
        channels = cv2.split(cv2.absdiff(roi, cv2.convertScaleAbs(self.background)))
        difference = cv2.max(cv2.max(channels[0], channels[1]), channels[2])
        clear = cv2.threshold(difference, self.cfg.diff_threshold, 1, cv2.THRESH_BINARY)[1]
        # An item's edge that looks like the belt (a pale backdrop, a shadowed corner) differs less:
        # taken down to faint_threshold where it lies next to the item's clear pixels, so the item
        # is not measured short (its pulse would start late). Apart, that little is noise.
        # Opened: a faint edge is a region; single pixels there are the belt's noise.
        faint = cv2.morphologyEx(cv2.threshold(difference, self.faint_levels, 1, cv2.THRESH_BINARY)[1],
                                 cv2.MORPH_OPEN, self.kernel)
        raw = clear | (faint & cv2.dilate(clear, self.faint_kernel))
        mask = cv2.morphologyEx(raw, cv2.MORPH_OPEN, self.kernel)
        # Follow slow lighting and belt changes where no item is: a plant runs for months.
        cv2.accumulateWeighted(roi, self.background, BACKGROUND_ADAPT, mask=(1 - mask))
        self._heal_ghosts(roi, mask, belt_mm)
        # Join the parts of one item that differ little from the belt (a pale edge, a shadow):
        # a fragment's centre would misplace the item and its ejection.
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self.join_kernel), raw

    def _above_noise(self, frames: np.ndarray, background: np.ndarray) -> int:
        """The faint-edge threshold, raised above the empty belt's own noise: below it, sensor noise
        next to an item would count as its edge and lengthen it (an early, wider pulse). The noise
        is the 99.9th percentile of how far the frames stray from their median, in any channel, at
        the pixels no item crossed while the belt was learned (an item entering the view then
        strays by 100 levels and more)."""
        stray = np.abs(frames.astype(np.int16) - np.round(background).astype(np.int16)).max(axis=-1)
        crossed = (stray >= self.cfg.diff_threshold).any(axis=0).astype(np.uint8)
        quiet = cv2.dilate(crossed, self.faint_kernel) == 0   # nor an item's faint edge
        wanted = self.cfg.faint_levels
        if quiet.mean() < QUIET_SHARE:
            log.warning("vision trigger: the empty belt's noise could not be measured (items or noise above "
                        "trigger.diff_threshold at %.0f %% of the view while it was learned); faint edges from "
                        "trigger.faint_threshold %d", 100 * (1 - quiet.mean()), wanted)
            return wanted
        noise = int(np.percentile(stray[:, quiet], NOISE_PERCENTILE))
        if wanted > noise:
            return wanted
        raised = min(noise + 1, self.cfg.diff_threshold)
        log.warning("vision trigger: the empty belt's noise reaches %d levels; faint edges are taken from %d "
                    "levels instead of trigger.faint_threshold %d", noise, raised, wanted)
        return raised

    def _heal_ghosts(self, roi: np.ndarray, mask: np.ndarray, belt_mm: float) -> None:
        """Pixels that stay foreground while the belt carries everything on it out of the view
        are no item but a wrong background (something that lay there when it was learned, or
        moved since): they become background. A stopped belt moves nothing, so nothing heals.
        Watched on every GHOST_GRID-th pixel: a ghost worth healing is far larger than that."""
        grid = mask[::GHOST_GRID, ::GHOST_GRID]
        if self._dwell_mm is None:
            self._dwell_mm, self._last_belt_mm = np.zeros(grid.shape, np.float32), belt_mm
        travel, self._last_belt_mm = max(belt_mm - self._last_belt_mm, 0.0), belt_mm
        dwell = self._dwell_mm
        dwell += travel
        dwell *= grid                                  # back to 0 wherever the belt shows
        limit_mm = GHOST_TRAVEL_VIEWS * roi.shape[1] * self.line.mm_per_px
        ghost = dwell > limit_mm
        if ghost.any():
            cells = cv2.resize(ghost.astype(np.uint8), (grid.shape[1] * GHOST_GRID, grid.shape[0] * GHOST_GRID),
                               interpolation=cv2.INTER_NEAREST)[:mask.shape[0], :mask.shape[1]]
            pixels = cv2.dilate(cells, self.kernel).astype(bool) & (mask > 0)
            self.background[pixels] = roi[pixels]
            dwell[ghost] = 0.0
            log.warning("vision trigger: %d px that stayed foreground over %.0f mm of belt travel taken into "
                        "the empty belt's image", int(pixels.sum()), limit_mm)

    def _detection(self, seg: Segment, frame: Frame, roi, belt_mm: float) -> Detection:
        x0, y0, rw, rh = roi
        bx, by, bw, bh = seg.bbox
        margin = self.cfg.edge_margin_px
        at_start, at_end = bx <= margin, bx + bw >= rw - margin
        height, width = frame.image.shape[:2]
        x_mm = (x0 + bx + bw / 2 - width / 2) * self.line.mm_per_px
        y_mm = (y0 + by + bh / 2 - height / 2) * self.line.mm_per_px
        return Detection(belt_mm - x_mm, y_mm, bw * self.line.mm_per_px, bh * self.line.mm_per_px,
                         whole=not (at_start or at_end), spanning=at_start and at_end, angle_deg=seg.angle_deg)

    @staticmethod
    def _observation(item_id: str, frame: Frame, box, belt_mm: float, detection: Detection) -> Observation:
        """The item cropped at `box` (x, y, w, h in the frame, clipped to it)."""
        x, y = max(box[0], 0), max(box[1], 0)
        crop = frame.image[y:box[1] + box[3], x:box[0] + box[2]].copy()
        return Observation(item_id, crop, (x, y, crop.shape[1], crop.shape[0]), belt_mm - detection.s_mm, belt_mm,
                           frame.t_capture, frame.encoder, frame.seq, detection.y_mm, detection.length_mm,
                           detection.width_mm, detection.angle_deg)


class PhotoEyeTrigger(Trigger):
    """An external beam: on its rising edge the item's leading edge is at the eye; the first
    frame that shows the whole item (by belt travel since the edge) is classified.

    The beam is sampled by its own thread every millisecond (a GPIO edge interrupt does the
    same on hardware): sampling once per frame would misplace items by up to a frame's travel.
    """

    POLL_S = 0.001

    def __init__(self, config: Config, belt: BeltTracker, beam: Callable[[], bool]):
        super().__init__()
        self.cfg, self.line, self.belt, self.beam = config.trigger, config.line, belt, beam
        self.seen = _SeenItems(self.cfg.min_gap_mm)
        self.pending: List[float] = []   # belt positions at rising edges
        self._edges = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="photo-eye", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        was_blocked = False
        while not self._stop.wait(self.POLL_S):
            blocked = bool(self.beam())
            if blocked and not was_blocked:
                with self._edges:
                    self.pending.append(self.belt.position())
                self._enter()
            was_blocked = blocked

    def close(self) -> None:
        self._stop.set()

    def observe(self, frame: Frame) -> List[Observation]:
        height, width = frame.image.shape[:2]
        half_view = width / 2 * self.line.mm_per_px
        belt_mm = self.belt.position_at_capture(frame.t_capture, frame.encoder)
        length = self.cfg.item_length_mm
        observations = []
        with self._edges:
            edges = list(self.pending)
        for edge_belt in edges:
            centre = self.cfg.photo_eye_position_mm + (belt_mm - edge_belt) - length / 2
            if centre - length / 2 < -half_view:
                continue  # not fully in view yet
            with self._edges:
                self.pending.remove(edge_belt)
            if centre + length / 2 > half_view:
                self._lost("passed between frames")  # missed, never guessed
                continue
            item_id = self.seen.new(belt_mm - centre)
            if item_id is None:  # a second edge within min_gap_mm of the last item: one item, counted
                self._lost("too close to the item before")
                continue
            left = int(width / 2 + (centre - length / 2) / self.line.mm_per_px)
            right = int(width / 2 + (centre + length / 2) / self.line.mm_per_px)
            bbox = (max(left, 0), 0, min(right, width) - max(left, 0), height)
            crop = frame.image[:, bbox[0]:bbox[0] + bbox[2]].copy()
            observations.append(Observation(item_id, crop, bbox, centre, belt_mm, frame.t_capture,
                                            frame.encoder, frame.seq, length_mm=length,
                                            width_mm=height * self.line.mm_per_px))
        return observations
