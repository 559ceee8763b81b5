"""One set of counters behind /metrics, the run summary and the operator page."""
from prometheus_client.parser import text_string_to_metric_families

from edge.service.telemetry import STAGES, Telemetry


def row(n, label):
    return {"item_id": f"{n:06d}", "class": label, "reason": "low_confidence" if n % 4 == 0 else "class",
            "t_wall": float(n)}


def test_totals_outlive_the_recent_window_and_match_metrics():
    """The summary once counted a list capped at 20000 entries; totals now come from counters."""
    telemetry = Telemetry(window=5)
    for n in range(1, 13):
        telemetry.decision(row(n, "glass" if n % 3 else "metal"), {stage: 0.001 * n for stage in STAGES})
    assert len(telemetry.recent_decisions()) == 5                      # the window is bounded ...
    assert telemetry.decisions == 12                                   # ... the totals are not
    assert telemetry.per_class() == {"glass": 8, "metal": 4}
    assert telemetry.total(telemetry.rejects) == 3
    assert telemetry.latency_ms()["inference"]["n"] == 5
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(telemetry.render().decode()) for s in family.samples}
    assert samples[("scrapsort_items_total", (("class", "glass"),))] == 8
    assert samples[("scrapsort_rejects_total", ())] == 3
    assert samples[("scrapsort_stage_latency_seconds_count", (("stage", "inference"),))] == 12
    assert any(name.startswith("python_gc_") for name, _ in samples)   # runtime metrics come for free
