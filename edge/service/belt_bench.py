"""`scrapsort bench --belt`: the whole line at three belt densities, checked against the truth.

Each density runs the daemon's loop on the simulated conveyor in real time with the run's
model and the line's ejectors, and reports what a plant asks: how many items came, how many
were decided (once), why the others were not, whether each bank fired exactly the valves
under its item, the ejection timing error and capture-to-decision latency. The per-frame
cost of finding the items (segmentation and tracking) is timed at two camera resolutions.
Results go to <run_dir>/bench/belt.json and belt.md, with the machine described.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

from edge.config import Config
from edge.stats import percentiles

DENSITIES: List[Tuple[str, Dict]] = [   # rows stay on the belt: lateral shifts are clamped where they fit
    ("sparse, single file", {"abreast": 1, "spacing_mm": 300, "rotation_deg": 20, "size_variation": 0.1,
                             "lateral_jitter_mm": 120}),
    ("two abreast, 40 mm gaps", {"abreast": 2, "spacing_mm": 250, "lateral_gap_mm": 40, "rotation_deg": 20,
                                 "size_variation": 0.1, "lateral_jitter_mm": 40}),
    ("dense, touching pairs", {"abreast": 2, "spacing_mm": 190, "lateral_gap_mm": -15, "rotation_deg": 45,
                               "size_variation": 0.2, "lateral_jitter_mm": 40}),
]
RESOLUTIONS = ((640, 360), (1280, 720))


def belt_bench(config: Config, items: int = 200, frames: int = 150) -> Dict:
    from edge.service.bench import machine

    out = config.run_path / "bench"
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), "items_per_density": items,
              "densities": [], "segmentation_ms": {}}
    for name, layout in DENSITIES:
        print(f"belt: {name}, {items} items ...", flush=True)
        result["densities"].append({"density": name, **run_density(config, layout, items, out / "belt-line")})
    for width, height in RESOLUTIONS:
        result["segmentation_ms"][f"{width}x{height}"] = segmentation_cost(config, width, height, frames)
    (out / "belt.json").write_text(json.dumps(result, indent=1))
    (out / "belt.md").write_text(markdown(result))
    return result


def _line(config: Config, layout: Dict, items: int, scratch: Path, **source) -> Config:
    sim = config.simulator.replace(items=items, processing_jitter_ms=(), **{"lateral_gap_mm": 40.0, **layout})
    audit = config.audit.replace(db=str(scratch / "audit.db"), captures_dir=str(scratch / "captures"))
    return config.replace(source=config.source.replace(uri="sim://", **source), simulator=sim, audit=audit,
                          observability=config.observability.replace(port=0), web=config.web.replace(port=0))


def run_density(config: Config, layout: Dict, items: int, scratch: Path) -> Dict:
    from edge.line.simulator import SimulatedConveyor
    from edge.service.report import summarize
    from edge.service.sorter import Sorter

    line = _line(config, layout, items, scratch)
    simulator = SimulatedConveyor(line)
    sorter = Sorter.from_config(line, simulator=simulator).run_to_end()
    s = summarize(sorter, simulator)
    return {"items": s["items_on_belt"], "entered": s["entered"], "decided": s["decisions"],
            "decided_items": s["items_decided"], "decided_twice": s["items_decided_more_than_once"],
            "unclassified": s["unclassified_by_reason"], "accounted": s["entered"] == s["decisions"] + s["unclassified"],
            "valve_sets": s["valve_sets"], "valve_sets_correct": s["valve_sets_correct"],
            "valve_sets_exact": s["valve_sets_exact"], "bank_pulses_covering_item": s["bank_pulses_covering_item"],
            "timing_p99_abs_ms": s["ejection_error_ms"]["p99_abs"], "pulses": s["ejection_error_ms"]["n"],
            "capture_to_decision_ms": s["latency_ms"]["capture_to_decision"],
            "frame_to_last_decision_ms": s["latency_ms"]["frame_to_last_decision"], "accuracy": s["accuracy"]}


def segmentation_cost(config: Config, width: int, height: int, frames: int = 150) -> Dict:
    """Per-frame time of finding and following items (VisionTrigger.observe) on rendered frames
    of the two-abreast belt, the camera scaled so the view covers the same belt."""
    from edge.line.belt import BeltTracker
    from edge.line.simulator import SimulatedConveyor
    from edge.line.sources import Frame
    from edge.line.trigger import VisionTrigger

    scale = config.source.width / width
    line = _line(config, DENSITIES[1][1], 40, config.run_path / "bench" / "belt-line", width=width, height=height)
    line = line.replace(line=line.line.replace(mm_per_px=config.line.mm_per_px * scale))
    conveyor = SimulatedConveyor(line)
    conveyor.t0 = 0.0
    trigger = VisionTrigger(line, BeltTracker(line.line))
    period = 1 / line.source.fps
    times = []
    for n in range(line.trigger.learn_frames + frames):
        t = n * period if n >= line.trigger.learn_frames else -1.0  # the empty belt first
        frame = Frame(conveyor.render(t), t, n, encoder=None)
        started = time.perf_counter()
        trigger.observe(frame)
        if n >= line.trigger.learn_frames:
            times.append(time.perf_counter() - started)
    return percentiles(times)


def markdown(result: Dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m.get('cpu')} ({m.get('cores')} cores; {' '.join(m.get('cpu_flags') or []) or 'no'} "
             f"speed-relevant CPU flags), {result['when']}. Real-time runs on the simulated belt, "
             f"{result['items_per_density']} items each.", "",
             "| density | items | entered the view | decided | unclassified (reason) | decided twice | "
             "correct valve sets (exact) | pulses covering the item | timing error \\|p99\\| ms | "
             "capture→decision p50 / p99 ms, per item | per frame (its last item) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["densities"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in r["unclassified"].items()) or "0"
        lines.append(f"| {r['density']} | {r['items']} | {r['entered']} | {r['decided']} "
                     f"({100 * r['decided'] / r['items']:.1f} %) | {reasons} | {r['decided_twice']} | "
                     f"{_share(r['valve_sets_correct'], r['valve_sets'])} ({r['valve_sets_exact']}) | "
                     f"{_share(r['bank_pulses_covering_item'], r['valve_sets'])} | "
                     f"{r['timing_p99_abs_ms']:.2f} | {_p50_p99(r['capture_to_decision_ms'])} | "
                     f"{_p50_p99(r.get('frame_to_last_decision_ms', {}))} |")
    lines += ["", "| frame size | segmentation + tracking per frame, p50 / p99 ms |", "|---|---|"]
    for size, p in result["segmentation_ms"].items():
        lines.append(f"| {size} | {p['p50']:.2f} / {p['p99']:.2f} |")
    return "\n".join(lines) + "\n"


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f} %)" if whole else "-"


def _p50_p99(p: Dict) -> str:
    return f"{p['p50']:.1f} / {p['p99']:.1f}" if p else "-"
