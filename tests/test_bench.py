import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.service.bench import SPEED_FLAGS
from edge.vision.dataset import Manifest
from tests.conftest import line_config


def test_bench_measures_every_model_present_and_the_daemon(trained_run, tmp_path):
    import shutil

    _, run = trained_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    # runtime.model left at its default (<run_dir>/model.onnx), as the shipped demo line has it
    line_config(tmp_path, run, run_dir=str(out), runtime={"model": ""}, simulator={"items": 3})
    assert main(["bench", "--config", str(tmp_path / "line.yaml"), "--iterations", "20", "--warmup", "1",
                 "--daemon-items", "30"]) == 0
    test_images = len(Manifest.load(out / "manifest.json").split("test"))
    result = json.loads((out / "bench" / "bench.json").read_text())
    rows = {(r["backend"], r["precision"]): r for r in result["models"]}
    flipped = ("ONNX Runtime (CPU), flip-averaged", "fp32")  # runtime.flip_average's cost and gain
    assert set(rows) == {("PyTorch eager", "fp32"), ("ONNX Runtime (CPU)", "fp32"), flipped}  # CPU: one provider here
    assert rows[("ONNX Runtime (CPU)", "fp32")]["runs_on"] == "CPUExecutionProvider"
    for row in rows.values():
        assert row["latency_ms"]["n"] == 20 and row["latency_ms"]["p50"] > 0 and row["peak_rss_mib"] > 0
        assert 0 <= row["accuracy"] <= 1 and row["accuracy_n"] == test_images
    torch_p50, ort_p50 = (rows[k]["latency_ms"]["p50"] for k in (("PyTorch eager", "fp32"), ("ONNX Runtime (CPU)", "fp32")))
    assert rows[("PyTorch eager", "fp32")]["speedup_vs_ort_fp32"] == pytest.approx(ort_p50 / torch_p50)
    assert rows[flipped]["speedup_vs_ort_fp32"] == pytest.approx(ort_p50 / rows[flipped]["latency_ms"]["p50"])
    assert result["daemon"]["bare_inference_p50_ms"] == ort_p50  # the line runs unflipped: its bare row
    assert result["daemon"]["model"] == str(out / "model.onnx")
    assert (out / "bench" / "line" / "audit.db").is_file() and not (out / "audit.db").exists()
    # the belt carries the run's test split, not the 48-image dataset folder
    assert result["daemon"]["items"] == test_images < 30
    assert result["daemon"]["latency_ms"]["inference"]["n"] == test_images
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
    assert set(result["machine"]["cpu_flags"]) == flags & SPEED_FLAGS                 # what this CPU really has
    assert " ".join(result["machine"]["cpu_flags"]) in (out / "bench" / "bench.md").read_text()
    assert (out / "bench" / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "| ONNX Runtime (CPU) | fp32 | CPUExecutionProvider |" in (out / "bench" / "bench.md").read_text()
    check_turns_taken(result)
    spinning = result["spinning"]
    assert spinning["cycles"] == 10 and set(spinning["modes"]) == {"off", "during_run", "always"}
    for mode in spinning["modes"].values():  # two runs of real work in every cycle's CPU time
        assert 0 < mode["after_idle_p50_ms"] and 0 < mode["back_to_back_p50_ms"]
        assert mode["cpu_ms_per_cycle"] >= mode["back_to_back_p50_ms"]
    assert "| during_run |" in (out / "bench" / "bench.md").read_text()


def check_turns_taken(result):
    """The models' timed runs were taken in turns, round by round, and the line ran between the
    two halves: a machine slowing down for a minute slows every row and the line alike."""
    rounds = result["rounds"]
    windows = [row["windows"] for row in result["models"]]
    assert all(len(w) == rounds for w in windows)
    for n in range(rounds - 1):  # every model's turn in round n ends before any turn of round n + 1 starts
        assert max(w[n][1] for w in windows) <= min(w[n + 1][0] for w in windows), n
    line_start, line_end = result["daemon"]["window"]
    half = rounds // 2
    assert max(w[half - 1][1] for w in windows) <= line_start < line_end <= min(w[half][0] for w in windows)


def test_a_model_that_fails_to_load_is_a_row_naming_why_and_the_others_are_measured(trained_run, tmp_path):
    import shutil

    _, run = trained_run
    out = tmp_path / "run"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("calibration"))
    (out / "model_fp16.onnx").write_bytes(b"\x08\x07truncated")
    line_config(tmp_path, run, run_dir=str(out), runtime={"model": ""})
    assert main(["bench", "--config", str(tmp_path / "line.yaml"), "--iterations", "10", "--warmup", "1",
                 "--daemon-items", "0", "--no-accuracy"]) == 0
    rows = {r["precision"]: r for r in json.loads((out / "bench" / "bench.json").read_text())["models"]
            if r["backend"] == "ONNX Runtime (CPU)"}
    assert "model_fp16.onnx" in rows["fp16"]["error"] and "latency_ms" not in rows["fp16"]
    assert rows["fp32"]["latency_ms"]["n"] == 10
    report = (out / "bench" / "bench.md").read_text()
    assert "| ONNX Runtime (CPU) | fp16 | failed: " in report
    assert "the line's run" not in report  # --daemon-items 0: no line ran between the rounds
