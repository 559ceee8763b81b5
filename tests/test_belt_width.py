"""Several items at once: side by side, touching, close in line; every item accounted for.
Checked against the simulator's ground truth (each item's class and 2-D position)."""
import numpy as np

from edge.line.segment import segments
from edge.line.simulator import BELT_GREY, SimulatedConveyor
from tests.conftest import check_exactly_once_and_timing, line_config, run_sim

WIDE_VIEW = {"source": {"uri": "sim://", "width": 320, "height": 240, "fps": 40}}   # 400 x 300 mm of belt


def belt_config(tmp_path, trained_run, **simulator):
    _, run = trained_run
    return line_config(tmp_path, run, **WIDE_VIEW, trigger={"type": "vision", "join_mm": 10},
                       simulator={"items": 8, "spacing_mm": 220, "item_length_mm": 110, **simulator})


def frame_with_row_in_view(conveyor: SimulatedConveyor, row: int = 0):
    """A rendered frame at the moment `row` is centred under the camera."""
    item = next(i for i in conveyor.items if i.row == row)
    conveyor.t0 = 0.0
    return conveyor.render(conveyor.motion.time_at(item.s_mm)), [i for i in conveyor.items if i.row == row]


def foreground(image):
    return (np.abs(image.astype(int) - BELT_GREY).max(axis=2) > 40).astype(np.uint8)


def row_segments(config, seed, **simulator):
    """Segments of the row centred under the camera (the next row, entering, left out), and that row's truth."""
    conveyor = SimulatedConveyor(config.replace(simulator=config.simulator.replace(seed=seed, **simulator)))
    image, row = frame_with_row_in_view(conveyor)
    centre = image.shape[1] / 2
    found = [s for s in segments(foreground(image), min_area=200) if abs(s.centre[0] - centre) < 50]
    mm = config.line.mm_per_px
    return sorted((s.centre[1] - image.shape[0] / 2) * mm for s in found), sorted(i.y_mm for i in row), row


def test_touching_turned_items_are_split_and_single_items_never_are(tmp_path, trained_run):
    """Items whose outlines touch, turned against each other (>= 20 degrees) as loose items lie,
    form one blob with a waist: split into one segment per item, each on its item (within
    25 mm: where one item covers the other, the visible part's centre moves). Measured: 20 of
    24 such pairs (3 stay one segment, one cut 26 mm off); docs/daemon.md says so."""
    config = belt_config(tmp_path, trained_run, rotation_deg=45, size_variation=0.2)
    split = []
    for seed in range(1, 41):
        found, truth, row = row_segments(config, seed, abreast=2, lateral_gap_mm=-15)
        if abs(row[0].angle_deg - row[1].angle_deg) >= 20:
            split.append(len(found) == 2 and np.allclose(found, truth, atol=25))
    assert len(split) >= 20 and sum(split) >= 0.8 * len(split), f"{sum(split)}/{len(split)}"
    for seed in range(1, 31):
        found, truth, _ = row_segments(config, seed, abreast=1)
        assert len(found) == 1 and abs(found[0] - truth[0]) < 15, seed


def test_side_by_side_pairs_are_two_decisions_each_on_its_own_item(tmp_path, trained_run):
    config = belt_config(tmp_path, trained_run, abreast=2, lateral_gap_mm=40)
    sorter, sim, summary = run_sim(config)
    check_exactly_once_and_timing(summary, sorter)
    rows = {item.row for item in sim.items}
    assert len(rows) == 4 and summary["items_on_belt"] == 8              # four rows of two, all decided once


def test_items_close_in_line_are_two_decisions(tmp_path, trained_run):
    config = belt_config(tmp_path, trained_run, spacing_mm=200, item_length_mm=110)   # 90 mm apart
    sorter, sim, summary = run_sim(config)
    check_exactly_once_and_timing(summary, sorter)


def test_dense_belt_accounts_for_every_item_that_entered(tmp_path, trained_run):
    config = belt_config(tmp_path, trained_run, items=12, abreast=3, lateral_gap_mm=0, touching_fraction=1.0,
                         rotation_deg=30, size_variation=0.2, spacing_mm=150)
    sorter, sim, summary = run_sim(config)
    assert summary["entered"] == summary["decisions"] + summary["unclassified"] > 0
    assert summary["items_decided_more_than_once"] == 0
    reasons = summary["unclassified_by_reason"]
    assert set(reasons) <= {"merged", "too long for the view", "never whole at the trigger line"}, reasons
