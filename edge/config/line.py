"""Config for the line itself: camera, belt geometry, trigger, decisions and ejector
positions, and the simulated conveyor used by the demo and the tests."""
from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from edge.config.base import Bool, Float, Int, Invalid, Section, Str

SOURCE_SCHEMES = ("sim", "file", "folder", "v4l2", "csi", "rtsp", "rtsps")


class SourceConfig(Section):
    uri: Str = Field("sim://", description="sim:// | file:///video.mp4 | folder:///images | v4l2:///dev/video0 | "
                                          "csi://0 | rtsp://host/...")
    width: Int = Field(640, ge=8)
    height: Int = Field(360, ge=8)
    fps: Float = Field(30.0, gt=0, le=1000)
    read_timeout_s: Float = Field(2.0, gt=0, description="no frame for this long: reopen the source")
    reopen_limit: Int = Field(5, ge=1, description="failed reopenings in a row before health reports the camera down")
    loop: Bool = Field(False, description="file/folder sources: start again at the end")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        if urlparse(uri).scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unsupported source {uri!r} (use one of {', '.join(s + '://' for s in SOURCE_SCHEMES)})")
        return uri


class LineConfig(Section):
    belt_speed_mm_s: Float = Field(400.0, gt=0, description="used when no encoder is configured")
    encoder: Bool = Field(False, description="belt position from the encoder input (inputs.encoder) instead of speed")
    mm_per_count: Float = Field(0.1, gt=0)
    mm_per_px: Float = Field(0.625, gt=0, description="camera scale along the belt (image x axis = belt direction)")
    max_frame_age_ms: Float = Field(1000.0, gt=0, description="older observations are skipped, never acted on")
    min_lead_ms: Float = Field(20.0, ge=0, description="an ejection closer than this to now is too late: not fired")


class TriggerConfig(Section):
    type: Literal["vision", "photo_eye"] = "vision"
    roi: Tuple[Float, Float, Float, Float] = Field((0.0, 0.0, 1.0, 1.0),
                                                   description="x, y, w, h as fractions of the frame")
    diff_threshold: Int = Field(40, ge=1, le=255, description="levels (0-255) of any colour channel between the frame and the empty belt")
    faint_threshold: Optional[Int] = Field(None, ge=1, le=255, description="levels: pixels differing this much (less "
                                           "than diff_threshold) within faint_reach_mm of an item's clear pixels are its "
                                           "faint edge, a part that looks like the belt (default: half diff_threshold; raised "
                                           "above the empty belt's noise, measured while learning it)")
    faint_reach_mm: Float = Field(10.0, ge=0, description="how far an item's faint edge may reach past its clear pixels")
    min_area: Float = Field(0.03, gt=0, le=1, description="smallest item, as a fraction of the ROI")
    learn_frames: Int = Field(10, ge=1, description="empty-belt frames averaged at start")
    edge_margin_px: Int = Field(4, ge=0, description="an item touching the ROI edge is not fully in view yet")
    min_gap_mm: Float = Field(60.0, ge=0, description="two observations closer than this on the belt are one item")
    join_mm: Float = Field(50.0, ge=0, description="foreground parts closer than this are joined into one item")
    photo_eye_position_mm: Float = Field(-150.0, description="photo_eye: beam position relative to the camera centre")
    item_length_mm: Float = Field(160.0, gt=0, description="photo_eye: expected item length along the belt")

    @field_validator("roi")
    @classmethod
    def _fractions(cls, roi):
        if not all(0 <= v <= 1 for v in roi) or roi[2] <= 0 or roi[3] <= 0:
            raise ValueError("must be [x, y, w, h] as fractions of the frame (0..1, w and h > 0)")
        return roi

    @model_validator(mode="after")
    def _faint_below_clear(self):
        if self.faint_threshold is not None and self.faint_threshold > self.diff_threshold:
            raise ValueError(f"faint_threshold ({self.faint_threshold}) must not exceed diff_threshold "
                             f"({self.diff_threshold}): it is the lower of the two")
        return self

    @property
    def faint_levels(self) -> int:
        return self.faint_threshold if self.faint_threshold is not None else max(1, self.diff_threshold // 2)


class ValveBankConfig(Section):
    outputs: Tuple[Int, ...] = Field(min_length=1, description="one actuator output per valve, in order across the "
                                                              "belt (from the image's top edge down)")
    lateral_mm: Tuple[Float, Float] = Field(description="start, end of the bank across the belt, from the camera's "
                                                        "centre line (image y, down positive)")

    @model_validator(mode="after")
    def _span(self):
        if self.lateral_mm[1] <= self.lateral_mm[0]:
            raise Invalid("lateral_mm", "must be [start, end] with end > start")
        if min(self.outputs) < 0 or len(set(self.outputs)) != len(self.outputs):
            raise Invalid("outputs", "must be distinct outputs >= 0")
        return self

    def valves_for(self, y_mm: float, width_mm: float, margin_mm: float) -> Tuple[int, ...]:
        """The valves whose strip of belt meets the item's lateral extent, widened by the margin."""
        start, end = self.lateral_mm
        pitch = (end - start) / len(self.outputs)
        low, high = y_mm - width_mm / 2 - margin_mm, y_mm + width_mm / 2 + margin_mm
        return tuple(out for i, out in enumerate(self.outputs) if start + i * pitch < high and start + (i + 1) * pitch > low)


class EjectorConfig(Section):
    bin: Str
    position_mm: Float = Field(gt=0, description="downstream of the camera centre")
    output: Optional[Int] = Field(None, ge=0, description="a single valve, diverter or coil (or `valves` for a bank)")
    valves: Optional[ValveBankConfig] = Field(None, description="a bank of valves across the belt: the ones under "
                                                                "each item fire, for as long as the item takes to pass")

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.output is None) == (self.valves is None):
            raise Invalid("output", "give either `output` (one valve) or `valves` (a bank across the belt)")
        return self

    @property
    def outputs(self) -> Tuple[int, ...]:
        return self.valves.outputs if self.valves else (self.output,)


class DecisionConfig(Section):
    threshold: Float = Field(0.6, ge=0, le=1, description="below: reject bin")
    reject_bin: Str = "reject"
    bins: Dict[Str, Str] = Field(default_factory=dict, description="class -> bin (default: a bin per class)")
    pulse_ms: Float = Field(30.0, gt=0, description="single valves: pulse length; banks: the shortest pulse")
    max_pulse_ms: Float = Field(100.0, gt=0, le=10000, description="hard cap, also enforced by the actuator drivers")
    lateral_margin_mm: Float = Field(10.0, ge=0, description="banks: valves this far beyond the item's sides fire too")
    lead_mm: Float = Field(10.0, ge=0, description="banks: the pulse starts this far before the item's leading edge "
                                                   "and ends as far after its trailing edge")
    ejectors: Tuple[EjectorConfig, ...] = ()

    @model_validator(mode="after")
    def _pulses_and_ejectors(self):
        if self.pulse_ms > self.max_pulse_ms:
            raise Invalid("pulse_ms", f"must be <= decision.max_pulse_ms ({self.max_pulse_ms})")
        outputs, bins = [o for e in self.ejectors for o in e.outputs], [e.bin for e in self.ejectors]
        if len(set(outputs)) != len(outputs) or len(set(bins)) != len(bins):
            raise Invalid("ejectors", "each ejector needs its own bin and its own output")
        return self

    def bin_of(self, label: str) -> str:
        return self.bins.get(label, label)


class SimulatorConfig(Section):
    dataset: Str = "../shared/datasets/trashnet"
    split: Literal["train", "val", "test"] = Field("test", description="items drawn from this split of the manifest")
    items: Int = Field(30, ge=1)
    spacing_mm: Float = Field(300.0, gt=0, description="between rows of items, along the belt")
    item_length_mm: Float = Field(160.0, gt=0, description="an item's size along the belt before rotation")
    abreast: Int = Field(1, ge=1, le=6, description="items side by side in a row, across the belt")
    lateral_gap_mm: Float = Field(40.0, description="between neighbours in a row (0: touching, below 0: overlapping)")
    touching_fraction: Float = Field(0.0, ge=0, le=1, description="rows whose items touch, whatever lateral_gap_mm")
    lateral_jitter_mm: Float = Field(0.0, ge=0, description="random shift of each row across the belt, +-")
    size_variation: Float = Field(0.0, ge=0, le=0.5, description="item length varies by +- this fraction")
    rotation_deg: Float = Field(0.0, ge=0, le=90, description="items turned by up to +- this angle")
    speed_variation: Float = Field(0.0, ge=0, lt=1, description="0.3: belt speed swings +-30% (sine), read "
                                                                "through the encoder")
    speed_period_s: Float = Field(4.0, gt=0)
    processing_jitter_ms: Tuple[Float, ...] = Field((), description="(low, high): injected delay after inference")
    seed: Int = 7

    @field_validator("processing_jitter_ms")
    @classmethod
    def _low_high(cls, jitter):
        if jitter and (len(jitter) != 2 or not 0 <= jitter[0] <= jitter[1]):
            raise ValueError("must be [low, high] in ms")
        return jitter
