"""Cross-validation: near-duplicate groups, grouped stratified folds, the k-fold run and the
final fit on every non-test image."""
import json
import shutil

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.errors import ConfigError
from edge.vision.dataset import Manifest
from tests.conftest import make_dataset, write_config

pytest.importorskip("sklearn")
pytest.importorskip("imagehash")


def test_hashes_within_the_distance_are_grouped_transitively_and_no_further():
    from train.cv import near_duplicate_groups

    a = 0x0F0F_0000_0000_0000
    hashes = [a, a ^ 0b11, a ^ 0b1111, a ^ 0b1111 ^ (0b1111 << 20), ~a & (2**64 - 1)]
    groups = near_duplicate_groups(hashes, 4)
    # 0-1 are 2 bits apart, 1-2 are 2, 0-2 are 4: one group; 3 is 4 bits from 2 (chained in),
    # 8 from 0; the complement is 64 bits away and alone.
    assert len(set(groups[:4])) == 1 and groups[4] != groups[0]
    assert len(set(near_duplicate_groups(hashes, 2)[:4])) == 2        # 2-3 and 0-3 too far at 2 bits


def test_folds_keep_each_group_whole_and_each_class_in_every_fold():
    from train.cv import assign_folds

    rng = np.random.default_rng(0)
    labels = [c for c in "abc" for _ in range(30)]
    groups = np.array([i // 3 for i in range(90)])  # objects photographed three times
    rng.shuffle(groups)
    fold_of = assign_folds(labels, groups, 5, seed=1)
    for group in set(groups):
        assert len(set(fold_of[groups == group])) == 1
    for fold in range(5):
        assert {labels[i] for i in np.nonzero(fold_of == fold)[0]} == {"a", "b", "c"}


@pytest.fixture
def prepared(tmp_path):
    data = make_dataset(tmp_path / "data")
    # A twin: the same photo a moment later (a little noise) filed as its own image.
    photo = cv2.imread(str(data / "glass" / "glass1.jpg"))
    noise = np.random.default_rng(0).integers(-4, 5, photo.shape)
    cv2.imwrite(str(data / "glass" / "glass1_again.jpg"), np.clip(photo + noise, 0, 255).astype(np.uint8))
    config = write_config(tmp_path / "tiny.yaml", data, tmp_path / "run",
                          train={"epochs": 2, "batch_size": 8, "workers": 0, "seed": 1, "schedule": "cosine"})
    assert main(["prepare", "--config", str(config), "-q"]) == 0
    return config, tmp_path / "run"


def test_cv_validates_every_non_test_image_once_and_keeps_twins_in_one_fold(prepared, capsys):
    config, run = prepared
    manifest = Manifest.load(run / "manifest.json")
    assert main(["cv", "--config", str(config), "--folds", "3", "--fold", "1", "-q"]) == 0   # one machine's share
    out = run / "cv" / "tiny"
    assert json.loads((out / "cv.json").read_text())["folds_finished"] == [1]
    assert "ONLY 1 of the folds finished" in capsys.readouterr().out
    trained_once = (out / "fold1" / "last.pt").stat().st_mtime_ns
    assert main(["cv", "--config", str(config), "--folds", "3", "-q"]) == 0                  # the rest
    assert (out / "fold1" / "last.pt").stat().st_mtime_ns == trained_once                   # not trained again
    result = json.loads((out / "cv.json").read_text())
    assert result["folds"] == 3 and result["folds_finished"] == [0, 1, 2] and len(result["per_fold"]) == 3 and result["epochs_run"] == 2
    assert result["mean"] == pytest.approx(np.mean(result["per_fold"]))
    assert result["chosen_epochs"] in (1, 2)
    held = {}
    for fold in range(3):
        fold_manifest = Manifest.load(out / f"fold{fold}" / "manifest.json")
        assert [i.path for i in fold_manifest.split("test")] == [i.path for i in manifest.split("test")]
        for item in fold_manifest.split("val"):
            assert item.path not in held
            held[item.path] = fold
        history = json.loads((out / f"fold{fold}" / "history.json").read_text())
        assert len(history) == 2                                       # no early stop inside a fold
    pool = manifest.split("train") + manifest.split("val")
    assert set(held) == {i.path for i in pool}                         # each non-test image validated once
    assert held["glass/glass1.jpg"] == held["glass/glass1_again.jpg"]   # both train/val images here
    assert result["grouping"]["images_in_shared_groups"] >= 2
    assert "chosen epochs" in capsys.readouterr().out
    assert result["last_fold_ran_on"].startswith("cpu (")                 # an epoch time says where it ran

    assert main(["cv", "--config", str(config), "--table"]) == 0          # the recipe table, nothing trained
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny |")]
    assert len(row) == 1 and "efficientnet_lite0, 64 px | 3 of 3" in row[0]
    assert f"**{100 * result['mean']:.2f} ± {100 * result['sd']:.2f} %**" in row[0]
    assert f"{result['chosen_epochs']} of 2" in row[0] and row[0].endswith(" M |")


def test_the_final_fit_trains_on_every_non_test_image_without_validation(prepared, capsys):
    config, run = prepared
    assert main(["train", "--config", str(config), "--final", "-q"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [row["val_acc"] for row in history] == [None, None]
    assert "trained on all non-test images for 2 epochs" in capsys.readouterr().out
    assert (run / "best.pt").is_file()


def test_a_final_fit_refuses_the_plateau_schedule(prepared, tmp_path, caplog):
    config, run = prepared
    plateau = tmp_path / "plateau.yaml"
    shutil.copy(config, plateau)
    plateau.write_text(plateau.read_text().replace("schedule: cosine", "schedule: plateau"))
    assert main(["train", "--config", str(plateau), "--final", "-q"]) == ConfigError.exit_code
    assert "set train.schedule: cosine" in caplog.text


def test_folds_trained_at_once_run_in_their_own_processes_and_give_the_sequential_folds(prepared, capsys):
    config, run = prepared
    assert main(["cv", "--config", str(config), "--folds", "3", "--jobs", "3", "-q"]) == 0
    out = run / "cv" / "tiny"
    result = json.loads((out / "cv.json").read_text())
    assert result["folds_finished"] == [0, 1, 2] and result["epochs_run"] == 2
    printed = capsys.readouterr().out
    pids = {line.split("process ")[1].split()[0] for line in printed.splitlines() if "training in process" in line}
    assert len(pids) == 3                                                  # one process per fold
    for fold in range(3):
        log = (out / f"fold{fold}" / "train.log").read_text()
        assert f"fold {fold + 1}/3" in log and "epoch 2:" in log           # each fold's own output, in its log
    held_at_once = {f: sorted(i.path for i in Manifest.load(out / f"fold{f}" / "manifest.json").split("val"))
                    for f in range(3)}
    shutil.rmtree(out)
    assert main(["cv", "--config", str(config), "--folds", "3", "-q"]) == 0
    for fold in range(3):                                                  # the same folds as one after another
        assert sorted(i.path for i in Manifest.load(out / f"fold{fold}" / "manifest.json").split("val")) == \
            held_at_once[fold]


def test_a_fold_that_fails_in_its_process_is_named_with_its_log_and_the_others_are_kept(prepared, caplog):
    config, run = prepared
    out = run / "cv" / "tiny"
    (out / "fold1").mkdir(parents=True)
    (out / "fold1" / "last.pt").write_bytes(b"not a checkpoint")           # resuming fold 1 fails
    assert main(["cv", "--config", str(config), "--folds", "3", "--jobs", "2", "-q"]) != 0
    assert "fold 2/3 (--fold 1) exited with" in caplog.text and str(out / "fold1" / "train.log") in caplog.text
    result = json.loads((out / "cv.json").read_text())
    assert result["folds_finished"] == [0, 2]                               # the others finished and count
    assert "last.pt" in (out / "fold1" / "train.log").read_text()            # its log says why


def test_stopping_a_run_of_folds_at_once_stops_every_fold(prepared):
    import os
    import signal
    import subprocess
    import sys
    import time

    config, run = prepared
    with open(config) as f:
        slow = f.read().replace("epochs: 2", "epochs: 50")                  # long enough to be stopped midway
    config.write_text(slow)
    parent = subprocess.Popen([sys.executable, "-m", "edge.cli", "cv", "--config", str(config), "--folds", "3",
                               "--jobs", "2", "-q"], stdout=subprocess.PIPE, text=True)
    pids = []
    while len(pids) < 2:
        line = parent.stdout.readline()
        assert line, "the run ended before both folds started"
        if "training in process" in line:
            pids.append(int(line.split("process ")[1].split()[0]))
    time.sleep(3)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.2)
    assert not alive, f"fold processes {alive} still train after their run was stopped"


def _running(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"                          # a zombie has stopped
