"""Shared fixtures: a small synthetic class-folder dataset and a tiny trained run.

The dataset is drawn, not downloaded: each class is a differently coloured shape on a
light background, so a one-epoch model on 64 px inputs already separates some of them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
COLOURS = [(40, 90, 160), (60, 160, 60), (160, 160, 160), (230, 230, 230), (200, 60, 60), (30, 30, 30)]
SHARED_TRASHNET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "trashnet"


def draw_item(label_index: int, seed: int, size=(96, 72)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = size
    image = np.full((h, w, 3), 235, np.uint8) + rng.integers(0, 15, (h, w, 3), dtype=np.uint8)
    centre = (int(rng.integers(30, w - 30)), int(rng.integers(25, h - 25)))
    colour = tuple(int(c) for c in COLOURS[label_index])
    if label_index % 2:
        cv2.circle(image, centre, int(rng.integers(12, 20)), colour, -1)
    else:
        cv2.rectangle(image, (centre[0] - 15, centre[1] - 12), (centre[0] + 15, centre[1] + 12), colour, -1)
    return image


def make_dataset(root: Path, per_class: int = 8) -> Path:
    for index, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            cv2.imwrite(str(root / label / f"{label}{n}.jpg"), draw_item(index, index * 100 + n))
    return root


def write_config(path: Path, data_root: Path, run_dir: Path, **sections) -> Path:
    config = {
        "classes": CLASSES,
        "run_dir": str(run_dir),
        "data": {"root": str(data_root), "seed": 1},
        "model": {"backbone": "efficientnet_lite0", "input_size": 64, "freeze_stages": 3},
        "train": {"epochs": 1, "batch_size": 8, "workers": 0, "seed": 1},
        "export": {"parity_images": 4},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """prepare -> train (1 epoch) -> export, once for the session. Returns (config path, run dir)."""
    from edge.cli import main

    base = tmp_path_factory.mktemp("run")
    data = make_dataset(base / "data")
    config = write_config(base / "tiny.yaml", data, base / "out")
    for command in (["prepare"], ["train"], ["export"]):
        assert main(command + ["--config", str(config), "-q"]) == 0, command
    return config, base / "out"


@pytest.fixture
def trashnet() -> Path:
    if not SHARED_TRASHNET.is_dir():
        pytest.skip(f"real data not present at {SHARED_TRASHNET}")
    return SHARED_TRASHNET


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
