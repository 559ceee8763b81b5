"""Finding items in frames: what differs from the belt, how far each item reaches, which
detections are one item, and items decided from their track before the frame is searched
(synthetic frames with known outlines, so every extent is checked to the pixel); then the
threads that time the line: the ejection timer's priority, the GIL, ONNX Runtime's threads."""
import cv2
import numpy as np
import pytest

from edge.line.belt import BeltTracker
from edge.line.simulator import BELT_GREY
from edge.line.sources import Frame
from edge.line.track import LOST_AFTER_FRAMES, Detection, Tracker
from edge.line.trigger import VisionTrigger
from tests.conftest import frozen_s, line_config, realtime_allowed

WIDTH, HEIGHT, FPS, SPEED, MM_PER_PX = 320, 160, 40, 500.0, 1.25


@pytest.fixture
def config(tmp_path):
    return line_config(tmp_path, tmp_path / "run", source={"width": WIDTH, "height": HEIGHT, "fps": FPS},
                       line={"belt_speed_mm_s": SPEED, "mm_per_px": MM_PER_PX}, trigger={"join_mm": 10})


def belt_frame(items=(), seed=0, noise=6):
    """The belt with sensor noise (0 to noise - 1 levels) and filled, turned boxes: (frame, each
    box's true bounding rect). An item is (centre x, centre y, length, width, angle, BGR colour)
    in pixels and degrees."""
    rng = np.random.default_rng(seed)
    frame = np.full((HEIGHT, WIDTH, 3), BELT_GREY, np.uint8) + rng.integers(0, noise, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    boxes = []
    for cx, cy, length, width, angle, colour in items:
        corners = np.round(cv2.boxPoints(((cx, cy), (length, width), angle))).astype(np.int32)
        cv2.fillPoly(frame, [corners], colour)
        mask = cv2.fillPoly(np.zeros((HEIGHT, WIDTH), np.uint8), [corners], 1)
        boxes.append(cv2.boundingRect(mask))
    return frame, boxes


def trigger_on_empty_belt(config, noise=6):
    """A vision trigger that has learned the empty belt, its belt clock starting at t = 0."""
    trigger = VisionTrigger(config, BeltTracker(config.line))
    trigger.belt.t0 = 0.0
    for n in range(config.trigger.learn_frames):
        trigger.observe(Frame(belt_frame(seed=n, noise=noise)[0], -1.0, n, None))
    return trigger


def detections(trigger, frame, seq=100):
    trigger.observe(Frame(frame, seq / FPS, seq, None))
    return [track.last for track in trigger.tracker.tracks if not track.missing]


def box_of(detection, t):
    """A detection's extent in the frame at time t, in pixels (x, y, w, h)."""
    x = WIDTH / 2 + (SPEED * t - detection.s_mm - detection.length_mm / 2) / MM_PER_PX
    y = HEIGHT / 2 + (detection.y_mm - detection.width_mm / 2) / MM_PER_PX
    return x, y, detection.length_mm / MM_PER_PX, detection.width_mm / MM_PER_PX


def test_an_item_as_bright_as_the_belt_but_coloured_is_found_whole(config):
    """A blue box whose grey level is the belt's (61 against 70): every colour channel is
    compared with the empty belt, not the grey level, so it is one whole item, not a hole."""
    trigger = trigger_on_empty_belt(config)
    frame, boxes = belt_frame([(160, 80, 110, 70, 0, (150, 60, 30))])
    assert abs(float(cv2.cvtColor(frame[80:81, 160:161], cv2.COLOR_BGR2GRAY)[0, 0]) - BELT_GREY) < 12
    found = detections(trigger, frame)
    assert len(found) == 1
    assert np.allclose(box_of(found[0], 100 / FPS), boxes[0], atol=1.0)


@pytest.mark.parametrize("angle", [0, 12, 20, 35])
def test_a_turned_item_is_measured_to_its_corners(config, angle):
    """Cleaning the mask against noise shaves the corners of a turned item; its extent comes
    from the raw mask, so the length that times a valve bank's pulse is exact to a pixel."""
    trigger = trigger_on_empty_belt(config)
    frame, boxes = belt_frame([(150, 80, 100, 60, angle, (210, 210, 210))])
    found = detections(trigger, frame)
    assert len(found) == 1
    assert np.allclose(box_of(found[0], 100 / FPS), boxes[0], atol=1.0), (box_of(found[0], 100 / FPS), boxes[0])


def test_an_item_whose_leading_edge_looks_like_the_belt_is_measured_to_that_edge(config):
    """The last 6 px (7.5 mm) of an item differ from the belt by 25 levels, under diff_threshold
    (40) but over faint_threshold (20): next to the item's clear pixels they are its edge, so its
    length, which starts its valves' pulse, is whole (measured short, the pulse would be 15 ms
    late at 500 mm/s). The same faint colour with nothing clear beside it is no item."""
    trigger = trigger_on_empty_belt(config)
    faint = (BELT_GREY + 25,) * 3
    frame, (whole, _, alone) = belt_frame([(153, 60, 106, 50, 0, faint), (150, 60, 100, 50, 0, (200, 200, 200)),
                                          (60, 120, 60, 40, 0, faint)])
    found = detections(trigger, frame)
    assert len(found) == 1, [box_of(d, 100 / FPS) for d in found]
    assert np.allclose(box_of(found[0], 100 / FPS), whole, atol=1.0), (box_of(found[0], 100 / FPS), whole)


def test_a_noisy_belt_raises_the_faint_edge_threshold_above_its_noise(config, caplog):
    """Sensor noise of 0-45 levels strays up to 23 levels from the belt's median, above the faint
    threshold (20): next to an item, noise would count as its edge and lengthen it. The trigger
    measures the empty belt's noise while learning it and takes faint edges only above it,
    saying so; the item is measured to its pixels, as on a quiet belt."""
    trigger = trigger_on_empty_belt(config, noise=46)
    assert trigger.faint_levels > config.trigger.faint_levels == 20
    assert "faint edges are taken from" in caplog.text
    for seed in range(20, 25):
        frame, (box,) = belt_frame([(150, 80, 100, 60, 0, (200, 200, 200))], seed=seed, noise=46)
        found = detections(trigger, frame)
        assert len(found) == 1 and np.allclose(box_of(found[0], 100 / FPS), box, atol=1.0), \
            (seed, box_of(found[0], 100 / FPS), box)


def test_an_item_entering_while_the_belt_is_learned_is_not_taken_for_noise(config, caplog):
    """An item coming into view during the last learning frames strays 130 levels from the belt's
    median there: the noise is measured where no item passed, so the faint threshold stays."""
    trigger = VisionTrigger(config, BeltTracker(config.line))
    for n in range(config.trigger.learn_frames):
        entering = [(n * 12 - 40, 80, 100, 60, 0, (200, 200, 200))] if n >= config.trigger.learn_frames - 3 else []
        trigger.observe(Frame(belt_frame(entering, seed=n)[0], -1.0, n, None))
    assert trigger.faint_levels == config.trigger.faint_levels == 20
    assert "noise" not in caplog.text


def test_an_item_lying_over_another_is_measured_to_its_corner_inside_the_other(config):
    """A turned item lies over a straight one and reaches 15 px into it with a corner. The cut
    between the notches of their outline runs across that corner; the image moves it to where
    the two meet, so each item's extent, which picks a bank's valves, is its own (within 3 px:
    extents are read from the uncleaned mask up to CORNER_PX around each part)."""
    trigger = trigger_on_empty_belt(config)
    frame, (lower, upper) = belt_frame([(160, 118, 140, 50, 0, (200, 200, 200)), (160, 58, 80, 60, 45, (30, 120, 220))])
    found = sorted(detections(trigger, frame), key=lambda d: d.y_mm)
    assert len(found) == 2
    for detection, box in zip(found, (upper, lower)):
        assert np.allclose(box_of(detection, 100 / FPS), box, atol=3.0), (box_of(detection, 100 / FPS), box)


def test_a_decided_item_seen_in_two_pieces_is_not_a_new_item():
    tracker = Tracker()
    whole = Detection(100.0, 0.0, 100.0, 80.0, whole=True, spanning=False)
    (track, _), = tracker.update([whole])[0]
    track.decided = True
    pieces = [Detection(80.0, 0.0, 55.0, 80.0, True, False), Detection(127.0, 0.0, 45.0, 80.0, True, False)]
    pairs, started, ended = tracker.update(pieces)
    assert started == [] and ended == [] and [t for t, _ in pairs] == [track]
    assert len(tracker.tracks) == 1


def run_together(tracker, frames, exit_s):
    """Two side-by-side items seen as one blob for `frames` frames."""
    for _ in range(frames):
        tracker.update([Detection(100.0, 0.0, 100.0, 160.0, True, False)], exit_s=exit_s)


@pytest.mark.parametrize("decided", [True, False])
def test_an_item_hidden_in_its_neighbours_blob_is_the_same_item_when_they_part(decided):
    """A pair run together for longer than a track may go unseen (LOST_AFTER_FRAMES), then part
    again (undecided: cut apart as they come fully into view; decided: the pieces of the pair
    leaving the view). Each part is its own item again: no new item enters, none is lost."""
    tracker = Tracker()
    pair = [Detection(100.0, -45.0, 100.0, 70.0, True, False), Detection(100.0, 45.0, 100.0, 70.0, True, False)]
    pairs, started, _ = tracker.update(pair, exit_s=0.0)
    for track in started:
        track.decided = decided
    run_together(tracker, LOST_AFTER_FRAMES + 2, exit_s=0.0)
    pieces = [Detection(80.0, -45.0, 40.0, 70.0, False, False), Detection(80.0, 45.0, 40.0, 70.0, False, False)]
    pairs, new, ended = tracker.update(pieces, exit_s=0.0)
    assert new == [] and ended == [] and {t.id for t, _ in pairs} == {t.id for t in started}


def test_a_hidden_item_ends_merged_once_the_belt_has_carried_it_out_of_view():
    tracker = Tracker()
    _, started, _ = tracker.update([Detection(100.0, -45.0, 100.0, 70.0, True, False),
                                    Detection(100.0, 45.0, 100.0, 70.0, True, False)], exit_s=0.0)
    run_together(tracker, LOST_AFTER_FRAMES + 2, exit_s=0.0)
    assert len(tracker.tracks) == 2                       # in view: kept, hidden in the blob
    ended = []
    for _ in range(LOST_AFTER_FRAMES):                    # its trailing edge (s 150) is past the view
        ended += tracker.update([Detection(100.0, 0.0, 100.0, 160.0, True, False)], exit_s=151.0)[2]
    assert [t.reason_undecided() for t in ended] == ["merged"]


def test_two_items_seen_as_one_then_apart_are_two_items():
    """An undecided blob that parts is two items (the second starts its own track)."""
    tracker = Tracker()
    (track, _), = tracker.update([Detection(100.0, 0.0, 100.0, 160.0, True, False)])[0]
    pairs, started, _ = tracker.update([Detection(100.0, -45.0, 100.0, 70.0, True, False),
                                        Detection(100.0, 45.0, 100.0, 70.0, True, False)])
    assert len(started) == 1 and {t.id for t, _ in pairs} == {track.id, started[0].id}


def test_an_item_is_decided_from_its_track_before_the_frame_is_searched(config):
    """Seen whole before the trigger line in one frame, the item is handed over from its track
    in the next, cropped where the belt carried it, before that frame is segmented; it is
    decided exactly once over its whole pass."""
    trigger = trigger_on_empty_belt(config)
    step = SPEED / FPS / MM_PER_PX                                  # 10 px per frame
    decided = []
    for n in range(100, 100 + int(WIDTH / step) + 12):
        t = n / FPS
        centre = -60 + step * (n - 100)
        frame, boxes = belt_frame([(centre, 70, 80, 50, 15, (200, 200, 200))], seed=n)
        frame_obj = Frame(frame, t, n, None)
        early, late = trigger.predicted(frame_obj), trigger.observe(frame_obj)
        decided += [("predicted", o, boxes[0]) for o in early] + [("observed", o, boxes[0]) for o in late]
    assert len(decided) == 1
    how, obs, truth = decided[0]
    assert how == "predicted"
    assert np.allclose(obs.bbox, truth, atol=1.5), (obs.bbox, truth)
    assert obs.crop.shape[:2] == (obs.bbox[3], obs.bbox[2])
    assert WIDTH / 2 <= obs.bbox[0] + obs.bbox[2] / 2 < WIDTH / 2 + step + 1       # at the trigger line
    assert trigger.take_entered() == 1 and trigger.take_unclassified() == []


def test_items_passing_while_the_empty_belt_is_learned_leave_no_ghost(config):
    """A line that starts with items already arriving: an item in 3 of the 10 frames the empty
    belt is learned from is no part of the belt (the median of the frames, not their mean)."""
    trigger = VisionTrigger(config, BeltTracker(config.line))
    trigger.belt.t0 = 0.0
    for n in range(config.trigger.learn_frames):
        items = [(60, 80, 80, 60, 0, (250, 250, 250))] if n >= 7 else []
        trigger.observe(Frame(belt_frame(items, seed=n)[0], -1.0, n, None))
    assert detections(trigger, belt_frame(seed=50)[0], seq=50) == []
    frame, boxes = belt_frame([(160, 80, 100, 60, 0, (210, 210, 210))], seed=51)
    found = detections(trigger, frame, seq=51)
    assert len(found) == 1 and np.allclose(box_of(found[0], 51 / FPS), boxes[0], atol=1.0)


@pytest.mark.parametrize("belt_moves", [True, False])
def test_a_ghost_becomes_belt_after_two_views_of_travel_never_on_a_stopped_belt(config, belt_moves):
    """Something that stays put in the image while the belt moves (a part that fell on the belt
    frame, a lighting change) is no item: after two view lengths of travel it is belt. A belt
    that stands still keeps its items, however long."""
    trigger = trigger_on_empty_belt(config)
    view_s = WIDTH * MM_PER_PX / SPEED                              # 0.8 s of travel per view
    seen = []
    for n in range(int(2.5 * view_s * FPS)):
        t = 2.0 + (n / FPS if belt_moves else 0.0)
        frame = belt_frame([(160, 80, 90, 60, 0, (210, 210, 210))], seed=n)[0]
        trigger.observe(Frame(frame, t, 200 + n, None))
        seen.append(any(not track.missing for track in trigger.tracker.tracks))
    travel_frames = int(2 * view_s * FPS)
    if belt_moves:
        assert all(seen[:travel_frames - 1]) and not any(seen[travel_frames + 2:])
    else:
        assert all(seen)


def scheduler_on_a_belt():
    from edge.config.line import LineConfig
    from edge.line.ejector import EjectionScheduler

    return EjectionScheduler(BeltTracker(LineConfig(belt_speed_mm_s=1000)), [])


@pytest.mark.skipif(not realtime_allowed(), reason="needs root or RLIMIT_RTPRIO >= 10 (LimitRTPRIO in the unit)")
def test_the_ejection_timer_runs_at_real_time_priority_where_allowed():
    """With inference and the camera keeping both cores busy, a normal-priority timer woke up to
    4-5 ms late (docs/benchmark.md); SCHED_FIFO for that one thread keeps it under 1 ms."""
    import os

    from edge.line.ejector import REALTIME_PRIORITY

    scheduler = scheduler_on_a_belt()
    scheduler.start()
    try:
        assert wait_until(lambda: scheduler.realtime)
        assert os.sched_getscheduler(scheduler.native_id) == os.SCHED_FIFO
        assert os.sched_getparam(scheduler.native_id).sched_priority == REALTIME_PRIORITY
        assert os.sched_getscheduler(0) == os.SCHED_OTHER          # the rest of the daemon is not
    finally:
        scheduler.stop()


def test_without_real_time_rights_the_timer_runs_and_says_how_to_grant_them(monkeypatch, caplog):
    import os

    def refused(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refused)
    scheduler = scheduler_on_a_belt()
    scheduler.start()
    try:
        assert wait_until(lambda: "LimitRTPRIO" in caplog.text)
        assert scheduler.is_alive() and not scheduler.realtime
    finally:
        scheduler.stop()


def test_the_service_unit_grants_the_timer_its_priority_and_no_more():
    from pathlib import Path

    from edge.line.ejector import REALTIME_PRIORITY

    unit = (Path(__file__).parent.parent / "systemd" / "scrapsort.service").read_text().splitlines()
    assert "RestrictRealtime=no" in unit and f"LimitRTPRIO={REALTIME_PRIORITY}" in unit


def test_the_sorter_lets_a_waiting_thread_take_the_gil_within_a_millisecond(tmp_path, trained_run):
    """The ejection timer needs the GIL the moment it wakes; Python's default 5 ms switch
    interval would add up to 5 ms to a pulse."""
    import sys

    from edge.service.sorter import GIL_SWITCH_S
    from tests.conftest import simulated_sorter

    before = sys.getswitchinterval()
    sorter = simulated_sorter(line_config(tmp_path, trained_run[1]))
    try:
        sorter.start()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_S) and GIL_SWITCH_S <= 0.001
    finally:
        sorter.shutdown()
        sys.setswitchinterval(before)


def test_a_full_garbage_collection_on_the_running_line_walks_only_what_the_line_made(tmp_path, trained_run):
    """A full collection holds the GIL while it walks every tracked object: with the libraries
    and models of a loaded process in it, the ejection timer would wait tens of milliseconds."""
    import gc
    import time

    from tests.conftest import simulated_sorter

    sorter = simulated_sorter(line_config(tmp_path, trained_run[1]))
    try:
        sorter.start()
        started = time.monotonic()
        gc.collect()
        ended = time.monotonic()
        took_ms = 1000 * (ended - started - frozen_s(started, ended))  # the time the machine ran
        assert took_ms < 5.0, f"a full collection took {took_ms:.1f} ms over {len(gc.get_objects())} objects"
    finally:
        sorter.shutdown()
        gc.unfreeze()


def wait_until(condition, timeout=2.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.mark.parametrize("spinning, entries", [
    (False, {"session.intra_op.allow_spinning": "0"}), ("off", {"session.intra_op.allow_spinning": "0"}),
    (True, {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": None}),
    ("during_run", {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"})])
def test_the_runtime_spinning_setting_reaches_onnx_runtime(tmp_path, trained_run, spinning, entries):
    from edge.service.wiring import open_model

    config = line_config(tmp_path, trained_run[1], runtime={"spinning": spinning, "threads": 0})
    backend = open_model(config)
    try:
        options = backend.session.get_session_options()

        def entry(key):
            try:
                return options.get_session_config_entry(key)
            except RuntimeError:  # not set
                return None
        assert {key: entry(key) for key in entries} == entries
    finally:
        backend.close()
