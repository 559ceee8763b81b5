"""Data-parallel training: two CPU processes under torchrun (gloo) against one process with the
same global batch."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from tests.conftest import free_port, make_dataset, write_config

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
NO_AUGMENT = {"hflip": 0, "vflip": 0, "rotation_deg": 0, "translate": 0, "scale": 0, "color_jitter": 0}


def prepared(tmp_path: Path, **sections) -> Path:
    config = write_config(tmp_path / "tiny.yaml", make_dataset(tmp_path / "data"), tmp_path / "base", **sections)
    assert main(["prepare", "--config", str(config), "-q"]) == 0
    return config


def train_in(run_dir: Path, config: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    """`scrapsort train` as one process, or as `processes` under torchrun, into run_dir."""
    if not run_dir.exists():
        shutil.copytree(config.parent / "base", run_dir)
    cli = ["-m", "edge.cli", "train", "--config", str(config), "--run-dir", str(run_dir), "-q", *extra]
    launch = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(launch + cli, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run_dir: Path, name: str = "last.pt"):
    return torch.load(run_dir / name, map_location="cpu", weights_only=False)


def whole_batches(config: Path, batch: int) -> None:
    """Move train images to val until the train split is whole global batches (no padding:
    the last batch is then the same on one process and on two)."""
    path = config.parent / "base" / "manifest.json"
    manifest = json.loads(path.read_text())
    train_items = [item for item in manifest["items"] if item["split"] == "train"]
    for item in train_items[:len(train_items) % batch]:
        item["split"] = "val"
    path.write_text(json.dumps(manifest))


def test_two_processes_train_the_same_weights_as_one_with_the_same_global_batch(tmp_path):
    """Only the head trains (no BatchNorm in train mode, no dropout, no augmentation): each
    step's averaged gradient over two half batches is the one process's gradient (class
    weights included), so the weights and the history match to float rounding."""
    config = prepared(tmp_path, model={"backbone": "resnet18", "weights": "none", "freeze_stages": 5, "dropout": 0.0},
                      train={"epochs": 3, "batch_size": 8, "workers": 0, "seed": 1, "augment": NO_AUGMENT,
                             "early_stop_patience": 10, "lr": 0.01})
    whole_batches(config, 8)
    train_in(tmp_path / "one", config, 1)
    proc = train_in(tmp_path / "two", config, 2)
    assert proc.stdout.count("epoch ") == 3                       # rank 0 alone prints
    single, distributed = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert single["epoch"] == distributed["epoch"] == 3
    fc_single, fc_distributed = single["model"]["fc.1.weight"], distributed["model"]["fc.1.weight"]
    assert float((fc_single - fc_distributed).abs().max()) < 1e-5 * float(fc_single.abs().max())
    for one, two in zip(single["history"], distributed["history"]):
        assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-5)
        assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-5)
        assert one["val_acc"] == two["val_acc"]


def test_distributed_training_resumes_from_rank_zeros_checkpoint(tmp_path):
    config = prepared(tmp_path, train={"epochs": 1, "batch_size": 8, "workers": 0, "seed": 1})
    run = tmp_path / "two"
    train_in(run, config, 2)
    assert weights(run)["epoch"] == 1
    proc = train_in(run, config, 2, "--resume", "--epochs", "2")
    resumed = weights(run)
    assert resumed["epoch"] == 2 and len(resumed["history"]) == 2
    assert "epoch 2:" in proc.stdout and "epoch 1:" not in proc.stdout
    assert len(json.loads((run / "history.json").read_text())) == 2


def test_a_global_batch_that_does_not_divide_by_the_processes_is_refused(tmp_path):
    config = prepared(tmp_path, train={"epochs": 1, "batch_size": 9, "workers": 0, "seed": 1})
    shutil.copytree(tmp_path / "base", tmp_path / "two")
    cli = ["-m", "edge.cli", "train", "--config", str(config), "--run-dir", str(tmp_path / "two"), "-q"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"] + cli,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "train.batch_size 9 is the global batch and must divide by the 2 processes" in proc.stderr
