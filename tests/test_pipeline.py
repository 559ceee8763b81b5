"""prepare -> train -> evaluate -> export -> predict on a tiny synthetic run."""
import json

import numpy as np
import onnx
import pytest

from edge.vision.backends import open_backend
from edge.cli import main
from edge.config import load_config
from edge.errors import ModelError
from edge.vision.dataset import Manifest
from edge.vision.images import read_image
from edge.vision.predict import Classifier
from tests.conftest import CLASSES, write_config


def test_training_writes_checkpoints_with_config_and_classes(trained_run):
    _, run = trained_run
    import torch

    ckpt = torch.load(run / "best.pt", weights_only=False)
    assert ckpt["classes"] == CLASSES and ckpt["config"]["model"]["input_size"] == 64
    assert len(ckpt["history"]) == 1 and (run / "last.pt").is_file()
    assert json.loads((run / "history.json").read_text())[0]["epoch"] == 1


def test_resume_continues_from_last_epoch(trained_run, tmp_path):
    config, run = trained_run
    import shutil

    copy = tmp_path / "resumed"
    shutil.copytree(run, copy)
    assert main(["train", "--config", str(config), "--run-dir", str(copy), "--epochs", "2", "--resume", "-q"]) == 0
    history = json.loads((copy / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_evaluate_writes_metrics_and_pngs(trained_run):
    config, run = trained_run
    assert main(["evaluate", "--config", str(config), "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    test_images = len(Manifest.load(run / "manifest.json").split("test"))
    assert metrics["split"] == "test" and metrics["count"] == test_images >= 6
    assert set(metrics["per_class"]) == set(CLASSES)
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["count"]
    assert metrics["correct"] == sum(metrics["confusion_matrix"][i][i] for i in range(6))
    for png in ("confusion_matrix.png", "training_history.png"):
        assert (run / png).read_bytes().startswith(b"\x89PNG")


def test_onnx_export_has_metadata_and_parity(trained_run):
    _, run = trained_run
    result = json.loads((run / "export.json").read_text())
    assert result["max_abs_diff"] < 1e-4 and result["parity_images"] == 4
    proto = onnx.load(str(run / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["scrapsort.classes"]) == CLASSES
    assert json.loads(meta["scrapsort.preprocess"])["mean"] == [127.0, 127.0, 127.0]
    assert proto.opset_import[0].version == 17
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]


def test_all_model_formats_agree(trained_run):
    _, run = trained_run
    image = read_image(sorted((run.parent / "data" / "glass").glob("*.jpg"))[0])
    outputs = {}
    for name in ("model.onnx", "best.pt", "model.ts"):
        with open_backend(run / name) as backend:
            outputs[name] = Classifier(backend).logits(image).copy()
    np.testing.assert_allclose(outputs["model.onnx"], outputs["best.pt"], atol=1e-4)
    np.testing.assert_allclose(outputs["model.ts"], outputs["best.pt"], atol=1e-4)


def test_predict_json_and_bad_files(trained_run, tmp_path, capsys):
    _, run = trained_run
    images = run.parent / "data" / "metal"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((images / "metal0.jpg").read_bytes()[:300])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    out = tmp_path / "predictions.jsonl"
    code = main(["predict", str(run / "model.onnx"), str(images), str(broken), str(text), "--json", str(out)])
    assert code == 2  # some files failed, all were processed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 10
    good = [r for r in records if "error" not in r]
    assert len(good) == 8
    for record in good:
        assert record["class"] in CLASSES and len(record["top"]) == 3
        assert record["top"][0]["class"] == record["class"]
        assert abs(sum(t["confidence"] for t in record["top"])) <= 1.0 + 1e-6
    errors = {r["path"]: r["error"] for r in records if "error" in r}
    assert "truncated JPEG" in errors[str(broken)] and "not a decodable image" in errors[str(text)]
    assert "metal0.jpg" in capsys.readouterr().out


def test_model_without_metadata_is_refused(trained_run, tmp_path):
    _, run = trained_run
    proto = onnx.load(str(run / "model.onnx"))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelError, match="no scrapsort metadata"):
        open_backend(bare)
    with pytest.raises(ModelError, match="not found"):
        open_backend(tmp_path / "missing.onnx")


def test_resnet18_from_scratch_trains_and_exports(tmp_path, dataset, caplog):
    from tests.conftest import write_config

    config = write_config(tmp_path / "r.yaml", dataset, tmp_path / "out",
                          model={"backbone": "resnet18", "weights": "none", "input_size": 64})
    for command in (["prepare"], ["train"], ["export"]):
        assert main(command + ["--config", str(config), "-q"]) == 0
    assert "trains from scratch" in caplog.text
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "out" / "model.onnx")).metadata_props}
    assert json.loads(meta["scrapsort.preprocess"])["mean"] == [123.675, 116.28, 103.53]
    assert load_config(config).model.backbone == "resnet18"


def test_backbone_learns_slower_than_head_when_asked():
    from edge.config import ModelConfig
    from train.models import build_model, head
    from train.recipe import param_groups

    model = build_model(ModelConfig(input_size=64), 6, load_weights=False)
    groups = param_groups(model, "efficientnet_lite0", 1e-3, 0.1)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in head(model, "efficientnet_lite0").parameters()}
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_checkpoint_from_an_older_config_schema_still_loads(trained_run, tmp_path):
    import torch

    from train.checkpoint import model_from_checkpoint

    _, run = trained_run
    ckpt = torch.load(run / "best.pt", weights_only=False)
    ckpt["config"]["calibration"]["a_setting_since_removed"] = True
    torch.save(ckpt, tmp_path / "old.pt")
    model, loaded = model_from_checkpoint(tmp_path / "old.pt")
    assert loaded["classes"] == CLASSES and loaded["config_obj"].model.input_size == 64


def test_augment_flips_vertically_and_scales_when_configured():
    import torch

    from edge.config import AugmentConfig
    from train.data import Augment

    image = torch.zeros((3, 32, 32), dtype=torch.uint8)
    image[:, :8, 12:20] = 255  # a bright block at the top
    still = dict(hflip=0.0, rotation_deg=0.0, translate=0.0, color_jitter=0.0)
    flipped = Augment(AugmentConfig(vflip=1.0, scale=0.0, **still), 32)(image)
    assert torch.equal(flipped, image.flip(1))
    assert torch.equal(Augment(AugmentConfig(vflip=0.0, scale=0.0, **still), 32)(image), image)
    zoomed = Augment(AugmentConfig(vflip=0.0, scale=0.5, **still), 32)
    torch.manual_seed(3)
    bright = [int((zoomed(image)[0] > 127).sum()) for _ in range(8)]
    assert len(set(bright)) > 1  # the block's size changes from draw to draw


def test_weight_average_is_what_is_kept_and_resumes(tmp_path, dataset):
    import torch

    config = write_config(tmp_path / "ema.yaml", dataset, tmp_path / "out", train={"ema_decay": 0.9})
    assert main(["prepare", "--config", str(config), "-q"]) == 0
    assert main(["train", "--config", str(config), "-q"]) == 0
    last = torch.load(tmp_path / "out" / "last.pt", weights_only=False)
    steps = last["ema_updates"]
    train_images = len(Manifest.load(tmp_path / "out" / "manifest.json").split("train"))
    assert steps == -(-train_images // 8)  # batches of 8: one update per optimiser step
    averaged, trained = last["model"], last["trained_model"]
    assert not torch.equal(averaged["_fc.weight"], trained["_fc.weight"])
    assert set(last["history"][0]) >= {"raw_val_acc", "val_acc"}

    assert main(["train", "--config", str(config), "--epochs", "2", "--resume", "-q"]) == 0
    assert torch.load(tmp_path / "out" / "last.pt", weights_only=False)["ema_updates"] == 2 * steps


def test_the_training_benchmark_measures_each_variant_against_the_configured_step(trained_run, tmp_path):
    import shutil

    from edge.config import load_config
    from train.benchmark import BF16_FLAGS, PLAIN, benchmark, table

    config_path, run = trained_run
    copy = shutil.copytree(run, tmp_path / "run")
    config = load_config(config_path).replace(run_dir=str(copy))
    result = benchmark(config, steps=3, warmup=1, progress=False,
                       only=["channels_last", "channels_last + bf16 autocast", "channels_last, 32 px (train.low_res)"])
    plain, channels_last, bf16, low_res = result["steps"]
    assert low_res["images_per_s"] > 0  # the tiny model's 64 px halved: the candidate below its size
    assert plain["variant"] == PLAIN and plain["speedup"] == 1.0 and result["configured"] == "channels_last"
    assert channels_last["speedup"] == pytest.approx(channels_last["images_per_s"] / plain["images_per_s"])
    assert plain["images_per_s"] > 0 and result["input_pipeline"]["images_per_s"] > 0
    if BF16_FLAGS & set(result["machine"]["cpu_flags"]):
        assert bf16["images_per_s"] > 0
    else:  # said, not silently measured as a slowdown
        assert "no AVX512-BF16 or AMX" in bf16["skipped"]
    assert result["epoch"]["minutes"] > 0
    assert json.loads((copy / "train_benchmark.json").read_text())["batch_size"] == 8
    assert "images/s" in table(result) and result["machine"]["cpu"] in table(result)


def test_low_res_epochs_train_on_smaller_batches_then_the_deployed_size(tmp_path, capsys):
    from tests.conftest import make_dataset, write_config

    config = write_config(tmp_path / "tiny.yaml", make_dataset(tmp_path / "data"), tmp_path / "run",
                          train={"epochs": 3, "batch_size": 8, "workers": 0, "seed": 1, "early_stop_patience": 5,
                                 "low_res": {"size": 32, "epochs": 2}})
    assert main(["prepare", "--config", str(config), "-q"]) == 0
    assert main(["train", "--config", str(config), "-q"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["size"] for row in history] == [32, 32, 64]
    import torch
    assert f"training on cpu ({torch.get_num_threads()} threads of " in capsys.readouterr().out  # what ran where
    assert history[-1]["ran_on"].startswith("cpu (") and history[-1]["ran_on"].endswith(", fp32)")


def test_progressive_resizing_steps_up_to_the_deployed_size_in_equal_runs():
    from edge.config.model import LowResConfig

    ramp = LowResConfig(size=128, epochs=10, progressive=True)
    assert [ramp.size_at(epoch, 224) for epoch in range(1, 13)] == [128] * 4 + [160] * 3 + [192] * 3 + [None] * 2
    assert [LowResConfig(size=128, epochs=2).size_at(epoch, 224) for epoch in (1, 2, 3)] == [128, 128, None]
    assert LowResConfig().size_at(1, 224) is None


def test_a_low_res_size_the_backbone_cannot_take_is_refused_with_the_fix(tmp_path):
    from edge.config import load_config
    from edge.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  low_res: {size: 150, epochs: 3}\n")
    with pytest.raises(ConfigError, match="150 must be a multiple of 32.*e.g. 128"):
        load_config(path)
