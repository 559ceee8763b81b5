"""The whole loop on the simulated conveyor, checked against the truth of every item."""
import json
import sqlite3

import pytest

from tests.conftest import EJECTORS, check_exactly_once_and_timing, line_config, run_sim, simulated_sorter


def test_fixed_speed_line_sorts_every_item_once_on_time(tmp_path, trained_run):
    _, run = trained_run
    sorter, sim, summary = run_sim(line_config(tmp_path, run))
    check_exactly_once_and_timing(summary, sorter)
    assert sorter.actuators[0].off_calls >= 2  # at start and at shutdown
    # The audit log holds every decision, durably.
    db = sqlite3.connect(str(tmp_path / "line" / "audit.db"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT item_id, class, bin, top3, latency_ms, model_sha256 FROM decisions").fetchall()
    assert len(rows) == summary["decisions"]
    assert all(len(json.loads(r[3])) == 3 and "inference" in json.loads(r[4]) for r in rows)
    assert {r[5] for r in rows} == {sorter.model.sha256}


def test_encoder_speed_swings_and_processing_jitter_keep_timing(tmp_path, trained_run):
    _, run = trained_run
    config = line_config(tmp_path, run,
                         line={"belt_speed_mm_s": 250, "encoder": True, "mm_per_count": 0.05, "max_frame_age_ms": 2000},
                         simulator={"items": 5, "speed_variation": 0.4, "speed_period_s": 1.5,
                                    "processing_jitter_ms": [200, 600]},
                         decision={"threshold": 0.0,
                                   "ejectors": [dict(e, position_mm=e["position_mm"] + 400) for e in EJECTORS]})
    sorter, sim, summary = run_sim(config)
    check_exactly_once_and_timing(summary, sorter)
    assert summary["latency_ms"]["postprocess"]["p50"] >= 200  # the jitter really was there


def test_low_confidence_goes_to_reject_and_is_captured(tmp_path, trained_run):
    _, run = trained_run
    sorter, sim, summary = run_sim(line_config(tmp_path, run, decision={"threshold": 1.0}))
    assert summary["rejects"] == summary["decisions"] == summary["items_on_belt"]
    assert {d["bin"] for d in sorter.telemetry.recent_decisions()} == {"reject"}
    assert {p.output for p in sorter.actuators[0].pulses} == {6}
    captures = list((tmp_path / "line" / "captures").rglob("*.jpg"))
    assert len(captures) == summary["decisions"]


def test_stale_frames_never_fire(tmp_path, trained_run):
    _, run = trained_run
    config = line_config(tmp_path, run, line={"max_frame_age_ms": 100},
                         simulator={"items": 4, "processing_jitter_ms": [200, 300]})
    sorter, sim, summary = run_sim(config)
    assert summary["stale_skipped"] == summary["items_on_belt"] and summary["decisions"] == 0
    assert sorter.actuators[0].pulses == []


@pytest.mark.parametrize("override, reason, outputs", [("force", "forced", {1}), ("pause", "paused", set())])
def test_operator_overrides(tmp_path, trained_run, override, reason, outputs):
    _, run = trained_run
    config = line_config(tmp_path, run, simulator={"items": 3})
    sorter = simulated_sorter(config)
    sorter.controls.force("glass") if override == "force" else sorter.controls.pause()
    sorter.run_to_end()
    assert len(sorter.telemetry.recent_decisions()) == 3 and {d["reason"] for d in sorter.telemetry.recent_decisions()} == {reason}
    assert {p.output for p in sorter.actuators[0].pulses} == outputs


def test_photo_eye_trigger(tmp_path, trained_run):
    _, run = trained_run
    config = line_config(tmp_path, run, trigger={"type": "photo_eye", "photo_eye_position_mm": -230,
                                                 "item_length_mm": 120, "min_gap_mm": 80},
                         simulator={"items": 5})
    sorter, sim, summary = run_sim(config)
    check_exactly_once_and_timing(summary, sorter)
