"""The model's life on a line: fine-tune from the line's model, compare it with the old one."""
import json
import shutil
import sqlite3
from dataclasses import replace

import cv2
import pytest

from edge.cli import main
from edge.config import load_config
from edge.errors import ModelError
from tests.conftest import CLASSES, draw_item, write_config


def test_fine_tuning_starts_from_the_line_model_and_a_new_class_gets_its_own_head_row(trained_run, tmp_path):
    import torch

    from train.checkpoint import load_checkpoint
    from train.models import build_model
    from train.train import init_weights
    from edge.vision.preprocess import PreprocessSpec

    config_path, run = trained_run
    data = tmp_path / "data"
    shutil.copytree(run.parent / "data", data)
    (data / "ceramic").mkdir()
    for n in range(8):
        cv2.imwrite(str(data / "ceramic" / f"ceramic{n}.jpg"), draw_item(1, 9000 + n))
    classes = ["ceramic"] + CLASSES[::-1]  # a new class, and the old ones in another order
    path = write_config(tmp_path / "grown.yaml", data, tmp_path / "grown", classes=classes)
    config = load_config(path)
    source = load_checkpoint(run / "best.pt")["model"]

    spec = PreprocessSpec.for_backbone("efficientnet_lite0", 64)
    model = build_model(config.model, len(classes), load_weights=False)
    init_weights(model, config, spec, classes, run)
    state = model.state_dict()
    assert torch.equal(state["_conv_stem.weight"], source["_conv_stem.weight"])
    for index, name in enumerate(classes[1:], start=1):
        old = CLASSES.index(name)
        assert torch.equal(state["_fc.weight"][index], source["_fc.weight"][old])
        assert state["_fc.bias"][index] == source["_fc.bias"][old]
    assert state["_fc.bias"][0] == pytest.approx(float(source["_fc.bias"].mean()))

    assert main(["prepare", "--config", str(path), "-q"]) == 0
    assert main(["train", "--config", str(path), "-q", "--init-from", str(run)]) == 0
    assert load_checkpoint(tmp_path / "grown" / "best.pt")["classes"] == classes

    fewer = write_config(tmp_path / "fewer.yaml", data, tmp_path / "fewer", classes=CLASSES[:5])
    with pytest.raises(ModelError, match=r"classes \['trash'\] are not in this config"):
        init_weights(build_model(load_config(fewer).model, 5, load_weights=False), load_config(fewer), spec,
                     CLASSES[:5], run / "best.pt")
    resnet = load_config(write_config(tmp_path / "r.yaml", data, tmp_path / "r", model={"backbone": "resnet18"}))
    with pytest.raises(ModelError, match="a efficientnet_lite0 model; the config trains resnet18"):
        init_weights(build_model(resnet.model, 6, load_weights=False), resnet,
                     PreprocessSpec.for_backbone("resnet18", 64), CLASSES, run)


def test_mcnemar_exact_matches_the_binomial_tail():
    from edge.stats import mcnemar_exact

    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)        # six discordant images, all for B
    assert mcnemar_exact(5, 1) == pytest.approx(2 * 7 / 64)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 30) == pytest.approx(0.002221, abs=1e-6)  # scipy.stats.binomtest(10, 40).pvalue


def biased_copy(model, path, favoured: int):
    """The model with one class's logit raised by 100: it answers that class for everything."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    last = proto.graph.node[-1]
    bias = next(i for i in proto.graph.initializer if i.name in last.input and len(i.dims) == 1)
    values = numpy_helper.to_array(bias).copy()
    values[favoured] += 100.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(path))
    return path


def test_the_verdict_follows_the_paired_test_on_every_slice():
    from edge.vision.compare import Image, compare_slice, verdict

    images = [Image(f"{n}.jpg", "glass", f"{n:064x}") for n in range(40)]
    a = {**{i.sha256: "glass" for i in images[:30]}, **{i.sha256: "metal" for i in images[30:]}}
    b_better = {i.sha256: "glass" for i in images}                                   # 10 fixed, none broken
    b_same = {**a, images[0].sha256: "metal", images[30].sha256: "glass"}            # one each way
    slice_better, slice_same = compare_slice(images, a, b_better, 0.05), compare_slice(images, a, b_same, 0.05)
    assert (slice_better["only_a_right"], slice_better["only_b_right"], slice_better["better"]) == (0, 10, "b")
    assert slice_better["mcnemar_p"] == pytest.approx(2 / 1024)
    assert slice_better["accuracy"] == {"a": 0.75, "b": 1.0} and slice_better["f1"]["metal"]["b"] == 0.0
    assert slice_same["better"] is None and slice_same["mcnemar_p"] == 1.0
    worse = compare_slice(images, b_better, a, 0.05)

    def judged(**slices):
        return verdict({"trained_on": {"a": 0, "b": 0}, "slices": slices}, 0.05)
    assert judged(test=slice_better)["verdict"] == "promote"
    assert judged(test=slice_better, review=slice_same)["verdict"] == "promote"
    assert judged(test=slice_same)["verdict"] == "keep"  # no evidence: the line keeps its model
    assert judged(test=slice_better, review=worse)["verdict"] == "keep"  # worse on the line's own items
    unfair = verdict({"trained_on": {"a": 0, "b": 3}, "slices": {"test": slice_better}}, 0.05)
    assert unfair["verdict"] == "unfair" and "B trained on 3" in unfair["reason"]


def test_compare_says_which_model_is_better_with_a_p_value_and_refuses_a_leaky_comparison(trained_run, tmp_path):
    from edge.stats import mcnemar_exact
    from edge.vision.compare import compare
    from edge.vision.dataset import Manifest

    config_path, run = trained_run
    worse = biased_copy(run / "model.onnx", tmp_path / "paper_only.onnx", CLASSES.index("paper"))
    manifest = Manifest.load(run / "manifest.json")
    everything = manifest.subset([replace(i, split="test") for i in manifest.items])  # 48 images

    result = compare(run / "model.onnx", worse, everything, tmp_path / "ab")
    test = result["slices"]["test"]
    assert test["images"] == 48 and test["accuracy"]["b"] == pytest.approx(8 / 48)
    a_right = round(test["accuracy"]["a"] * 48)
    a_right_on_paper = a_right - test["only_a_right"]  # both right: exactly A's right answers on paper
    assert test["only_b_right"] == 8 - a_right_on_paper
    assert all(d["b"] == "paper" and d["a"] != "paper" for d in test["disagreements"])
    assert test["mcnemar_p"] == mcnemar_exact(test["only_a_right"], test["only_b_right"]) < 1.0
    assert result["recommendation"]["verdict"] == "keep"  # B is not better: it never replaces A
    assert "KEEP" in (tmp_path / "ab" / "compare.md").read_text()
    assert json.loads((tmp_path / "ab" / "compare.json").read_text())["recommendation"]["verdict"] == "keep"
    same = compare(run / "model.onnx", run / "model.onnx", everything, tmp_path / "aa")
    assert same["slices"]["test"]["mcnemar_p"] == 1.0 and same["recommendation"]["verdict"] == "keep"

    # The run dir names its training images: comparing on them proves nothing.
    leaky = compare(run, worse, everything, tmp_path / "leak")
    assert leaky["recommendation"]["verdict"] == "unfair" and "trained on" in leaky["recommendation"]["reason"]

    assert main(["compare", str(run), str(worse), "--config", str(config_path), "-q",
                 "--output", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "compare.md").is_file()


def file_sha(path):
    from edge.vision.backends.base import file_sha256

    return file_sha256(path)


def stamped_copy(model, path, **metadata):
    """The model with some metadata changed: another file (another sha256), the same weights."""
    from train.onnx_meta import stamp

    shutil.copy(model, path)
    stamp(path, metadata)
    return path


def test_a_model_is_hot_swapped_mid_belt_and_rolled_back_with_every_item_decided_once(trained_run, tmp_path):
    import threading

    from edge.service.report import summarize
    from tests.conftest import check_exactly_once_and_timing, line_config, simulated_sorter, wait_for

    _, run = trained_run
    models = tmp_path / "models"
    models.mkdir()
    stamped_copy(run / "model.onnx", models / "v2.onnx", **{"scrapsort.version": "v2"})
    stamped_copy(run / "model.onnx", models / "rocks.onnx", **{"scrapsort.classes": json.dumps(CLASSES[:5] + ["rocks"])})
    biased_copy(run / "model.onnx", models / "paper_only.onnx", CLASSES.index("paper"))
    config = line_config(tmp_path, run, simulator={"items": 40, "spacing_mm": 200},
                         models={"dir": str(models), "canary": str(run.parent / "data")})
    sorter = simulated_sorter(config)
    first = sorter.model
    loop = threading.Thread(target=sorter.run_to_end)
    loop.start()
    swapper = sorter.swapper

    def outcome():
        assert wait_for(lambda: swapper.last.get("state") in ("running", "refused"), timeout=30), swapper.last
        return swapper.last

    assert wait_for(lambda: sorter.telemetry.decisions >= 6, timeout=30)
    swapper.request(swapper.allowed("v2.onnx"), "test")
    assert outcome()["state"] == "running" and sorter.model.version == "v2"
    at_swap = sorter.telemetry.decisions
    swapper.request(swapper.allowed("rocks.onnx"), "test")
    assert "differ from the line's" in outcome()["error"] and sorter.model.version == "v2"
    swapper.request(swapper.allowed("paper_only.onnx"), "test")
    assert "canary images" in outcome()["error"] and sorter.model.version == "v2"
    (models / "truncated.onnx").write_bytes((models / "v2.onnx").read_bytes()[:5000])  # a copy cut short
    swapper.request(swapper.allowed("truncated.onnx"), "test")
    assert "truncated.onnx" in outcome()["error"] and sorter.model.version == "v2"
    with pytest.raises(KeyError):
        swapper.allowed("../../etc/passwd.onnx")  # nothing outside models.dir
    assert wait_for(lambda: sorter.telemetry.decisions >= at_swap + 6, timeout=30)
    swapper.rollback()
    assert outcome()["state"] == "running" and sorter.model.sha256 == first.sha256
    loop.join(timeout=60)
    assert not loop.is_alive()

    summary = summarize(sorter, sorter.line.simulator)
    check_exactly_once_and_timing(summary, sorter)  # no item dropped or decided twice, pulses on time
    with sqlite3.connect(str(sorter.audit.path)) as db:
        deciders = [r[0] for r in db.execute("SELECT model_version FROM decisions ORDER BY id")]
        events = [r[0] for r in db.execute("SELECT kind FROM events WHERE kind LIKE 'model_swap%' ORDER BY id")]
    blocks = [m for i, m in enumerate(deciders) if i == 0 or m != deciders[i - 1]]
    assert blocks == [first.label, f"v2@{file_sha(models / 'v2.onnx')[:12]}", first.label]  # who decided each item
    assert events == ["model_swapped"] + ["model_swap_refused"] * 3 + ["model_swapped"]
    metrics = sorter.telemetry.render().decode()
    assert f'model="{file_sha(models / "v2.onnx")[:12]}"' in metrics and \
        f'scrapsort_model_info{{model="{first.sha256[:12]}"' in metrics


def test_a_refused_swap_takes_the_next_request_as_soon_as_its_outcome_shows(tmp_path):
    """The outcome an operator reads (/api/model) and the end of "a swap is being prepared"
    are one step: a slow audit write after the refusal must not turn the next request away."""
    import time
    from types import SimpleNamespace

    from edge.config.loader import Config
    from edge.service.model_swap import ModelSwapper

    def slow_audit(kind, fields):
        time.sleep(0.5)  # an audit log on a slow card

    running = SimpleNamespace(label="v1", path=str(tmp_path / "v1.onnx"), sha256="0" * 64)
    swapper = ModelSwapper(Config.model_validate({"classes": CLASSES}), lambda: running, slow_audit)
    for name in ("gone.onnx", "also_gone.onnx"):
        swapper.request(tmp_path / name, "test")
        deadline = time.monotonic() + 10
        while swapper.last.get("state") != "refused" and time.monotonic() < deadline:
            time.sleep(0.001)
        assert swapper.last["state"] == "refused" and name in swapper.last["error"]
        assert not swapper.busy
    swapper.close()


def test_sighup_loads_the_configured_model_and_a_broken_config_changes_nothing(trained_run, tmp_path):
    import signal

    import yaml

    from tests.test_daemon_process import start_daemon
    from tests.conftest import audit_rows, wait_for

    _, run = trained_run
    v2 = stamped_copy(run / "model.onnx", tmp_path / "v2.onnx", **{"scrapsort.version": "v2"})
    config, proc = start_daemon(tmp_path, run, simulator={"items": 60, "spacing_mm": 200},
                                models={"canary": str(run.parent / "data")})
    path, db_path = tmp_path / "line.yaml", tmp_path / "line" / "audit.db"

    def query(sql):
        return audit_rows(db_path, sql)
    try:
        assert wait_for(lambda: len(query("SELECT id FROM decisions")) >= 3, timeout=60)
        path.write_text(path.read_text() + "\nnot: [valid")  # a half-edited config, then reload
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: query("SELECT detail FROM events WHERE kind = 'model_swap_refused'"), timeout=20)
        edited = yaml.safe_load(path.read_text().rsplit("\nnot:", 1)[0])
        edited["runtime"]["model"] = str(v2)
        path.write_text(yaml.safe_dump(edited))
        proc.send_signal(signal.SIGHUP)  # systemctl reload
        assert wait_for(lambda: query("SELECT id FROM decisions WHERE model_version LIKE 'v2@%'"), timeout=30)
        assert proc.poll() is None  # still sorting
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    swapped = [json.loads(r[0]) for r in query("SELECT detail FROM events WHERE kind = 'model_swapped'")]
    assert len(swapped) == 1 and swapped[0]["reason"] == "reload" and swapped[0]["to"].startswith("v2@")
    assert "reload refused" in output


@pytest.mark.parametrize("slow", [False, True])
def test_a_shadow_model_sees_every_crop_it_can_and_never_delays_the_line(trained_run, tmp_path, monkeypatch, slow):
    import time

    from edge.service.shadow import ShadowModel
    from tests.conftest import check_exactly_once_and_timing, line_config, run_sim

    _, run = trained_run
    candidate = biased_copy(run / "model.onnx", tmp_path / "paper_only.onnx", CLASSES.index("paper"))
    if slow:  # a shadow far slower than the belt: it must drop crops, never hold the line up
        classify = ShadowModel._classify
        monkeypatch.setattr(ShadowModel, "_classify", lambda self, *a: (time.sleep(1.0), classify(self, *a)))
    config = line_config(tmp_path, run, simulator={"items": 12, "spacing_mm": 200},
                         models={"shadow": str(candidate), "shadow_queue": 1})
    sorter, sim, summary = run_sim(config)
    check_exactly_once_and_timing(summary, sorter)
    with sqlite3.connect(str(sorter.audit.path)) as db:
        rows = db.execute("SELECT item_id, live_class, class, agrees, model_sha256 FROM shadow").fetchall()
    decided = {d["item_id"]: d["class"] for d in sorter.telemetry.recent_decisions()}
    dropped = sorter.telemetry.total(sorter.telemetry.shadow_dropped)
    assert len(rows) + dropped == len(decided) == 12
    assert (summary["shadow"]["items"], summary["shadow"]["dropped"]) == (len(rows), dropped)
    assert summary["shadow"]["agreed"] == sum(r[3] for r in rows)
    assert (dropped > 0) is slow
    assert all(r[2] == "paper" and r[1] == decided[r[0]] and r[3] == (r[1] == "paper") for r in rows)
    assert {r[4] for r in rows} <= {file_sha(candidate)}
    agreement = sorter.telemetry.shadow_summary()["per_class"]
    for label in set(r[1] for r in rows):
        mine = [r for r in rows if r[1] == label]
        assert agreement[label] == sum(r[3] for r in mine) / len(mine)
    assert f'scrapsort_shadow_model_info{{model="{file_sha(candidate)[:12]}"' in sorter.telemetry.render().decode()


def test_a_shadow_model_never_holds_the_loop_up_when_the_cores_are_busy(trained_run, tmp_path):
    """A low-priority side model inside the daemon's process once shared its GIL: preempted
    while holding it (the cores busy), it kept the loop's threads waiting up to 100 ms."""
    import gc
    import os
    import subprocess
    import sys
    import threading
    import time

    import numpy as np

    from edge.service.shadow import ShadowModel
    from edge.service.telemetry import Telemetry
    from tests.conftest import freeze_spans, frozen_s, line_config

    _, run = trained_run
    config = line_config(tmp_path, run, models={"shadow": str(run / "model.onnx"), "shadow_queue": 4})
    answered = []
    audit = type("Audit", (), {"shadow": lambda self, row: answered.append(row)})()
    shadow = ShadowModel(config, Telemetry(), audit, line_idle=lambda timeout: None)
    shadow.start()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # as the sorter sets it
    gc.disable()  # this test process's own collections are not what is measured
    try:
        crop, overshoot, ends = np.full((120, 160, 3), 90, np.uint8), [], time.monotonic() + 6.0
        while time.monotonic() < ends:  # a loop thread: wakes every 2 ms, offers a crop every 20 ms
            for _ in range(10):
                started = time.monotonic()
                time.sleep(0.002)
                woke = time.monotonic()
                overshoot.append((started, woke - started - 0.002))
            shadow.offer({"item_id": str(len(overshoot)), "class": "paper", "confidence": 0.9}, crop)
    finally:
        gc.enable()
        sys.setswitchinterval(switch_interval)
        for burner in burners:
            burner.kill()
        shadow.close()
    assert len(answered) > 20  # the shadow did classify meanwhile
    spans = freeze_spans()  # the whole machine standing still holds up every thread alike
    waited = [late - frozen_s(started, started + 0.002 + late, spans) for started, late in overshoot]
    worst = 1000 * np.percentile(waited, [99, 100])
    assert worst[1] < 25.0, f"the loop thread waited up to {worst[1]:.0f} ms (p99 {worst[0]:.1f} ms)"


def test_a_shadow_model_whose_process_dies_stops_shadowing_and_counts_what_it_missed(trained_run, tmp_path, caplog):
    import numpy as np

    from edge.service.shadow import ShadowModel
    from edge.service.telemetry import Telemetry
    from tests.conftest import line_config, wait_for

    _, run = trained_run
    config = line_config(tmp_path, run, models={"shadow": str(run / "model.onnx"), "shadow_queue": 2})
    telemetry, answered = Telemetry(), []
    audit = type("Audit", (), {"shadow": lambda self, row: answered.append(row)})()
    shadow = ShadowModel(config, telemetry, audit, line_idle=lambda timeout: None)
    shadow.start()
    crop = np.full((120, 160, 3), 90, np.uint8)
    try:
        shadow.offer({"item_id": "000001", "class": "paper", "confidence": 0.9}, crop)
        assert wait_for(lambda: len(answered) == 1, timeout=30)
        shadow.model._process.kill()          # the candidate's process crashes (OOM killer, a bad engine)
        for n in range(2, 8):                 # the loop keeps offering, never waits
            shadow.offer({"item_id": f"{n:06d}", "class": "paper", "confidence": 0.9}, crop)
        assert wait_for(lambda: not shadow.is_alive(), timeout=30)
        assert "shadow model stopped" in caplog.text and len(answered) == 1
        for n in range(8, 10):                # offered after it stopped
            shadow.offer({"item_id": f"{n:06d}", "class": "paper", "confidence": 0.9}, crop)
        assert telemetry.total(telemetry.shadow_dropped) == 8   # every crop it did not answer is counted
    finally:
        shadow.close()
