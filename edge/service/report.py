"""Run summary; on the simulated conveyor, checked against the known truth of every item."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np

from edge.service.sorter import Sorter
from edge.stats import percentiles


# A valve set is right when it is the set for the item's true extent widened by the margin give
# or take this much: a strip boundary that close to the item's edge plus margin can go either
# way with an extent measured to a pixel or two (0.8 mm each on configs/demo.yaml).
VALVE_TOLERANCE_MM = 5.0


def summarize(sorter: Sorter, simulator=None) -> Dict:
    """Totals from the line's counters (the same ones /metrics shows); latency percentiles
    over the recent window."""
    t = sorter.telemetry
    summary = {
        "decisions": t.decisions, "rejects": t.total(t.rejects), "invalid_outputs": t.total(t.invalid_outputs),
        "pulses": t.total(t.ejected),
        "stale_skipped": t.total(t.stale), "dropped": t.total(t.dropped), "unclassified": t.total(t.unclassified),
        "entered": t.total(t.entered), "unclassified_by_reason": t.by_label(t.unclassified, "reason"),
        "late_not_fired": t.total(t.late),
        "link_suppressed": t.total(t.suppressed), "frames": t.total(t.frames), "latency_ms": t.latency_ms(),
        "model": sorter.model.path, "precision": sorter.model.precision, "backend": sorter.backend.name,
        "runs_on": sorter.backend.runs_on, "model_label": sorter.model.label,
    }
    if sorter.shadow is not None:
        summary["shadow"] = {"model": sorter.shadow.info.label, **t.shadow_summary()}
    summary["latency_ms"]["frame_to_last_decision"] = _per_frame(t.recent_decisions())
    if simulator is not None:
        summary.update(_against_truth(sorter, simulator))
    return summary


def _per_frame(decisions) -> Dict[str, float]:
    """Capture to the last decision of each frame: the items of one frame are classified one
    after another, so this is the frame's cost, the per-item stages above each item's."""
    last: Dict[float, float] = {}
    for d in decisions:
        last[d["t_capture"]] = max(last.get(d["t_capture"], 0.0), d["latency_ms"]["capture_to_decision"])
    return percentiles(list(last.values()), scale=1.0)


def _decisions_and_truth(sorter: Sorter, sim) -> Tuple[Dict, Dict]:
    """Each decision by item id, and the simulated item it was about (None: no item there)."""
    by_id, truth_of = {}, {}
    for d in sorter.telemetry.recent_decisions():
        by_id[d["item_id"]] = d
        truth_of[d["item_id"]] = sim.item_at(d["t_capture"], d["x_mm"], d.get("y_mm", 0.0))
    return by_id, truth_of


def pulse_timing(sorter: Sorter, sim, truth_of: Optional[Dict] = None) -> List[Tuple[float, float]]:
    """(fired at, error in s) of each pulse for a simulated item, against the moment the item's
    own centre (leading edge for a valve bank) truly reached its ejector. `truth_of`: the
    decisions' items, where the caller has them already."""
    truth_of = _decisions_and_truth(sorter, sim)[1] if truth_of is None else truth_of
    decision = sorter.config.decision
    ejector_of = {o: e for e in decision.ejectors for o in e.outputs}
    timing = []
    for fired in sorter.scheduler.fired:
        item = truth_of.get(fired.item_id)
        if item is not None:
            ejector = ejector_of[fired.outputs[0]]
            lead = item.length_mm / 2 + decision.lead_mm if ejector.valves else 0.0
            timing.append((fired.t_fired, fired.t_fired - sim.truth_time(item, ejector.position_mm - lead)))
    return timing


def _against_truth(sorter: Sorter, sim) -> Dict:
    by_id, truth_of = _decisions_and_truth(sorter, sim)
    matched = [i for i in truth_of.values() if i is not None]
    per_item = Counter(item.index for item in matched)
    correct = sum(1 for item_id, item in truth_of.items() if item and by_id[item_id]["class"] == item.label)
    decision = sorter.config.decision
    ejector_of = {o: e for e in decision.ejectors for o in e.outputs}
    wrong_bin, valve_sets, right_valves, exact_valves, covered = 0, 0, 0, 0, 0
    for fired in sorter.scheduler.fired:
        item = truth_of.get(fired.item_id)
        if item is None:
            continue
        ejector = ejector_of[fired.outputs[0]]
        chosen = sorter.ejectors.get(by_id[fired.item_id]["bin"])
        wrong_bin += chosen is None or chosen is not ejector
        if ejector.valves:
            valve_sets += 1
            fired_set, bank, margin = set(fired.outputs), ejector.valves, decision.lateral_margin_mm
            exact_valves += fired_set == set(bank.valves_for(item.y_mm, item.width_mm, margin))
            right_valves += set(bank.valves_for(item.y_mm, item.width_mm, margin - VALVE_TOLERANCE_MM)) <= fired_set \
                <= set(bank.valves_for(item.y_mm, item.width_mm, margin + VALVE_TOLERANCE_MM))
            arrives = sim.truth_time(item, ejector.position_mm - item.length_mm / 2)
            leaves = sim.truth_time(item, ejector.position_mm + item.length_mm / 2)
            covered += fired.t_fired <= arrives and fired.t_fired + fired.width_s >= leaves
    errors = [error for _, error in pulse_timing(sorter, sim, truth_of)]
    spread = percentiles(np.abs(errors))
    return {
        "items_on_belt": len(sim.items),
        "items_decided": len(per_item),
        "items_decided_more_than_once": sum(1 for n in per_item.values() if n > 1),
        "decisions_without_item": len(truth_of) - len(matched),
        "accuracy": correct / len(matched) if matched else 0.0,
        "pulses_to_wrong_output": wrong_bin,
        "valve_sets": valve_sets, "valve_sets_correct": right_valves, "valve_sets_exact": exact_valves,
        "bank_pulses_covering_item": covered,
        "ejection_error_ms": {"mean": float(np.mean(errors) * 1000) if errors else 0.0,
                              "p50_abs": spread.get("p50", 0.0), "p99_abs": spread.get("p99", 0.0),
                              "max_abs": spread.get("max", 0.0), "n": len(errors)},
    }


def format_summary(s: Dict) -> str:
    lines = [f"model {s['model']} ({s['backend']}, {s['precision']}; {s['model_label']})",
             f"frames {s['frames']}, decisions {s['decisions']}, rejects (low confidence) {s['rejects']}, "
             f"invalid model output {s['invalid_outputs']}, "
             f"pulses {s['pulses']}, stale skipped {s['stale_skipped']}, dropped {s['dropped']}, "
             f"unclassified {s['unclassified']}, "
             f"too late (not fired) {s['late_not_fired']}",
             f"items that entered the view {s['entered']} = decided {s['decisions']} + unclassified "
             f"{s['unclassified']}" + (f" ({', '.join(f'{r}: {n}' for r, n in s['unclassified_by_reason'].items())})"
                                       if s['unclassified'] else "")]
    if "shadow" in s:
        sh = s["shadow"]
        lines.append(f"shadow model {sh['model']}: agreed on {sh['agreed']} of {sh['items']} items"
                     + (f" ({sh['agreement']:.1%})" if sh["items"] else "")
                     + f", {sh['dropped']} skipped while behind")
    if "items_on_belt" in s:
        e = s["ejection_error_ms"]
        lines.append(f"items on belt {s['items_on_belt']}, decided {s['items_decided']} "
                     f"(more than once: {s['items_decided_more_than_once']}), accuracy vs known labels "
                     f"{s['accuracy'] * 100:.1f}%")
        if s["valve_sets"]:
            lines.append(f"valve banks: {s['valve_sets_correct']} of {s['valve_sets']} ejections fired the valves "
                         f"under their item and its margin (+-{VALVE_TOLERANCE_MM:g} mm), {s['valve_sets_exact']} "
                         f"exactly; {s['bank_pulses_covering_item']} pulses lasted from its leading edge to its "
                         f"trailing edge")
        lines.append(f"ejection timing error: mean {e['mean']:+.2f} ms, |p50| {e['p50_abs']:.2f} ms, "
                     f"|p99| {e['p99_abs']:.2f} ms, |max| {e['max_abs']:.2f} ms over {e['n']} pulses")
    lines.append("stage latency (ms):     p50      p90      p99      max")
    for stage, p in s["latency_ms"].items():
        if p:
            lines.append(f"  {stage:<20}{p['p50']:>7.2f}  {p['p90']:>7.2f}  {p['p99']:>7.2f}  {p['max']:>7.2f}")
    return "\n".join(lines)
