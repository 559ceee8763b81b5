"""One set of counters behind /metrics, the run summary and the operator page."""
from prometheus_client.parser import text_string_to_metric_families

from edge.service.telemetry import STAGES, Telemetry


def row(n, label):
    return {"item_id": f"{n:06d}", "class": label, "reason": "low_confidence" if n % 4 == 0 else "class",
            "confidence": 0.5 if n % 4 == 0 else 0.9, "t_wall": float(n)}


def test_totals_outlive_the_recent_window_and_match_metrics():
    """The summary once counted a list capped at 20000 entries; totals now come from counters."""
    telemetry = Telemetry(window=5)
    telemetry.model_label = "0123456789ab"  # the running model: every decision metric names it
    for n in range(1, 13):
        telemetry.decision(row(n, "glass" if n % 3 else "metal"), {stage: 0.001 * n for stage in STAGES})
    assert len(telemetry.recent_decisions()) == 5                      # the window is bounded ...
    assert telemetry.decisions == 12                                   # ... the totals are not
    assert telemetry.per_class() == {"glass": 8, "metal": 4}
    assert telemetry.total(telemetry.rejects) == 3
    assert telemetry.latency_ms()["inference"]["n"] == 5
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(telemetry.render().decode()) for s in family.samples}
    assert samples[("scrapsort_items_total", (("class", "glass"), ("model", "0123456789ab")))] == 8
    assert samples[("scrapsort_rejects_total", (("model", "0123456789ab"),))] == 3
    assert samples[("scrapsort_top1_confidence_count", (("model", "0123456789ab"),))] == 12
    assert samples[("scrapsort_top1_confidence_bucket", (("le", "0.5"), ("model", "0123456789ab")))] == 3
    assert samples[("scrapsort_stage_latency_seconds_count", (("stage", "inference"),))] == 12
    assert any(name.startswith("python_gc_") for name, _ in samples)   # runtime metrics come for free


def test_history_keeps_an_hour_of_minutes_and_the_exact_last_minute():
    from edge.service.history import History

    now = [10_000 * 60.0]
    history = History(minutes=60, clock=lambda: now[0])
    for minute, label, confidence, rejected in [(0, "glass", 0.95, False), (0, "metal", 0.35, True),
                                                (30, "glass", 0.55, False), (61, "paper", 0.99, False)]:
        now[0] = 10_000 * 60.0 + minute * 60 + 5
        history.decision(label, confidence, rejected, {"inference": 0.004 + minute / 1e4})
    history.link("valves", True)
    history.link("valves", True)        # unchanged: not recorded again
    history.link("valves", False)
    series = history.series()
    assert len(series["minute_starts"]) == 60 and series["minute_starts"][-1] == 10_061 * 60
    assert sum(series["items"]["glass"]) == 1           # minute 0 is older than the last hour now
    assert series["items"]["paper"][-1] == 1 and series["items"]["glass"][-32] == 1
    assert "metal" not in series["items"]
    assert series["confidence_histogram"][5] == 1 and series["confidence_histogram"][9] == 1
    assert series["latency_ms"]["inference"]["p50"][-1] == 10.1 and series["latency_ms"]["inference"]["p99"][0] is None
    assert [up for _, up in series["links"]["valves"]] == [True, False]
    assert history.items_last_minute() == 1
    now[0] += 60
    assert history.items_last_minute() == 0
