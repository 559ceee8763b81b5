"""`scrapsort cv`: k-fold cross-validation of a recipe (a config) on the non-test images.

One validation split of ~200 images has a standard error of 1.5-2 points, so choosing a
recipe or an epoch count on it mostly picks noise. Here every non-test image is validated
once, in k folds. Folds are grouped: photos of one object taken a moment apart are nearly the
same image, and one in training with its twin in validation would score memory, not
generalisation. Images whose perceptual hashes (64-bit DCT hash) differ in at most
`GROUP_DISTANCE` bits are linked, and linked images (transitively) share a fold. Every fold
runs all epochs (no early stopping), so the epoch count is chosen on the mean curve; the
result is the mean ± sd over folds at that epoch. The test split is never read.

Folds may train at once, each in its own process (`jobs`): one fold of a small model at batch
32 leaves a GPU mostly idle, so k folds of several recipes share one card.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import yaml

from edge.config import Config
from edge.errors import ConfigError, ImageError, ScrapsortError
from edge.files import atomic_write
from edge.vision.dataset import MANIFEST_NAME, Item, Manifest
from edge.vision.images import read_image

log = logging.getLogger(__name__)
GROUP_DISTANCE = 8    # bits of 64: the rule, measured on TrashNet (docs/training.md, "Cross-validation")
HASHES_NAME = "phash.json"
FOLD_LOG = "train.log"      # a fold trained in its own process (`jobs`) writes its output here


def perceptual_hashes(manifest: Manifest, items: Sequence[Item], cache: Path, progress: bool) -> Dict[str, int]:
    """Each image's 64-bit perceptual hash, by content; cached beside the manifest."""
    import imagehash
    from PIL import Image
    from tqdm import tqdm

    known = {k: int(v, 16) for k, v in json.loads(cache.read_text()).items()} if cache.is_file() else {}
    missing = [i for i in items if i.sha256 not in known]
    if not missing:  # folds trained at once all read it; none rewrites it
        return known
    for item in tqdm(missing, desc="hashing", unit="img", disable=not progress):
        try:
            image = Image.fromarray(read_image(manifest.absolute(item))[:, :, ::-1])  # BGR -> RGB
        except ImageError as exc:
            raise ImageError(f"{exc}; re-run `scrapsort prepare`") from None
        known[item.sha256] = int(str(imagehash.phash(image)), 16)
    atomic_write(cache, json.dumps({k: f"{v:016x}" for k, v in known.items()}).encode())
    return known


def near_duplicate_groups(hashes: Sequence[int], distance: int) -> np.ndarray:
    """A group number per hash: hashes within `distance` bits are linked, groups are the
    linked sets (union-find over all pairs)."""
    codes = np.array(hashes, dtype=np.uint64)
    parent = np.arange(len(codes))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(codes) - 1):
        close = np.nonzero(np.bitwise_count(codes[i + 1:] ^ codes[i]) <= distance)[0] + i + 1
        for j in close:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(codes))])


def assign_folds(labels: Sequence[str], groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per image: class proportions kept per fold, a group never split."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), int)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), list(labels), groups)):
        fold_of[held] = fold
    return fold_of


def grouped_pool(manifest: Manifest, run_dir: Path, distance: int, progress: bool):
    """The non-test, non-review images, their hashes (all images') and their groups."""
    pool = manifest.split("train") + manifest.split("val")
    hashes = perceptual_hashes(manifest, manifest.items, run_dir / HASHES_NAME, progress)
    return pool, hashes, near_duplicate_groups([hashes[i.sha256] for i in pool], distance)


def grouping_rule(config: Config, distances: Sequence[int], progress: bool = True) -> List[Dict]:
    """What each candidate distance would group, with the test split's near-duplicates
    (`scrapsort cv --grouping`): the measurement behind GROUP_DISTANCE."""
    manifest = Manifest.load(config.run_path / MANIFEST_NAME)
    pool, hashes, _ = grouped_pool(manifest, config.run_path, 0, progress)  # hashed once, grouped per distance
    rows = []
    for distance in distances:
        groups = near_duplicate_groups([hashes[i.sha256] for i in pool], distance)
        rows.append({**grouping_report(groups, distance),
                     "test_images_with_a_near_duplicate_in_the_pool": _test_twins(manifest, hashes, pool, distance)})
    return rows


def grouping_report(groups: np.ndarray, distance: int) -> Dict:
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    return {"distance_bits": distance, "images": int(len(groups)), "groups": int(len(sizes)),
            "images_in_shared_groups": int(sizes[sizes > 1].sum()), "largest_group": int(sizes.max())}


def cross_validate(config: Config, name: str, folds: int = 5, progress: bool = True,
                   distance: int = GROUP_DISTANCE, only: Optional[Sequence[int]] = None, jobs: int = 1) -> Dict:
    """Train the recipe (the config called `name`) k times, resumable fold by fold; score each
    held-out fold. Results in <run_dir>/cv/<name>/. `only`: train just these folds (several
    machines can share the folds of one run dir); the summary covers the folds finished.
    `jobs` > 1: that many folds train at once, each in its own process (`train_at_once`)."""
    from train.train import train

    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: at least one fold trains at a time")
    if only and not set(only) <= set(range(folds)):
        raise ConfigError(f"--fold {sorted(only)}: folds are numbered 0 to {folds - 1}")
    run_dir = config.run_path
    manifest = Manifest.load(run_dir / MANIFEST_NAME)
    pool, hashes, groups = grouped_pool(manifest, run_dir, distance, progress)
    fold_of = assign_folds([i.label for i in pool], groups, folds, manifest.seed)
    out = run_dir / "cv" / name
    # Every fold runs every epoch: the epoch count is chosen on the mean curve, not per fold.
    recipe = config.replace(train=config.train.replace(early_stop_patience=config.train.epochs + 1))
    curves, finished, failed = [], [], {}
    pooled = {id(item) for item in pool}
    todo = [f for f in range(folds)
            if not _finished(out / f"fold{f}", recipe.train.epochs) and (only is None or f in only)]
    if jobs > 1 and len(todo) > 1:
        failed = train_at_once(recipe, name, folds, todo, jobs, distance, out)
        todo = []
    for fold in range(folds):
        fold_dir = out / f"fold{fold}"
        if fold in todo:
            held = {id(item) for item, f in zip(pool, fold_of) if f == fold}
            items = [replace(item, split="val" if id(item) in held else "train") if id(item) in pooled else item
                     for item in manifest.items]
            manifest.subset(items).save(fold_dir / MANIFEST_NAME)
            print(f"fold {fold + 1}/{folds}: {len(held)} images held out", flush=True)
            train(recipe.replace(run_dir=str(fold_dir)), resume=True, progress=progress)
        if _finished(fold_dir, recipe.train.epochs):
            history = json.loads((fold_dir / "history.json").read_text())
            curves.append([row["val_acc"] for row in history])
            finished.append(fold)
            epoch_seconds, ran_on = [row["seconds"] for row in history], history[-1].get("ran_on")
    if curves:
        result = summarise(curves)
        recipe_dict = config.to_dict()
        result.update({"config": name, "folds": folds, "folds_finished": finished,
                       "seconds_per_epoch_last_fold": epoch_seconds, "last_fold_ran_on": ran_on,
                       "train": recipe_dict["train"], "model": recipe_dict["model"],
                       "grouping": grouping_report(groups, distance),
                       "test_images_with_a_near_duplicate_in_the_pool": _test_twins(manifest, hashes, pool, distance)})
        atomic_write(out / "cv.json", json.dumps(result, indent=1).encode())  # folds trained at once write it too
    if failed:
        logs = "; ".join(f"fold {f + 1}/{folds} (--fold {f}) exited with {code}, its log: "
                         f"{out / f'fold{f}' / FOLD_LOG}" for f, code in failed.items())
        raise ScrapsortError(f"{logs}. Fix the cause and run the same command again: finished folds are kept, "
                             f"unfinished ones resume from their last epoch" +
                             (f"; {out / 'cv.json'} covers the folds finished so far" if curves else ""))
    if not curves:
        raise ConfigError(f"no fold of {out} has finished; run `scrapsort cv` without --fold")
    return result


def train_at_once(recipe: Config, name: str, folds: int, todo: Sequence[int], jobs: int, distance: int,
                  out: Path) -> Dict[int, int]:
    """Train the `todo` folds, `jobs` at a time, each in its own `scrapsort cv --fold` process
    (its output in <fold>/train.log). The processes split the CPU's threads between them.
    Returns the folds that failed, with their exit codes; stopped early, it ends the others."""
    recipe_file = out / "recipe.yaml"  # the recipe as this run resolved it (overrides included)
    atomic_write(recipe_file, yaml.safe_dump(recipe.to_dict(), sort_keys=False).encode())
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    pending, running, failed = list(todo), {}, {}
    # A stop (SIGTERM from systemd, `timeout` or kill) ends the folds too, as Ctrl-C does.
    main_thread = threading.current_thread() is threading.main_thread()  # only there can it take signals
    stopped = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        while pending or running:
            while pending and len(running) < jobs:
                fold = pending.pop(0)
                log_path = out / f"fold{fold}" / FOLD_LOG
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "ab") as log_file:
                    running[fold] = subprocess.Popen(
                        [sys.executable, "-m", "edge.cli", "cv", "--config", str(recipe_file), "--name", name,
                         "--folds", str(folds), "--fold", str(fold), "--distance", str(distance), "-q"],
                        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                print(f"fold {fold + 1}/{folds}: training in process {running[fold].pid} (log {log_path})", flush=True)
            time.sleep(0.5)
            for fold, process in list(running.items()):
                if process.poll() is not None:
                    del running[fold]
                    if process.returncode:
                        failed[fold] = process.returncode
                    ended = f"FAILED, exit {process.returncode}" if process.returncode else "done"
                    print(f"fold {fold + 1}/{folds}: {ended}", flush=True)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, stopped)
        for process in running.values():  # interrupted: no fold trains on unwatched
            process.terminate()
        for process in running.values():
            process.wait()
    return failed


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _finished(fold_dir: Path, epochs: int) -> bool:
    path = fold_dir / "history.json"
    return path.is_file() and len(json.loads(path.read_text())) >= epochs


def summarise(curves: List[List[float]]) -> Dict:
    """Mean ± sd over folds per epoch; the chosen epoch is the best mean (first of ties)."""
    epochs = min(len(c) for c in curves)
    scores = np.array([c[:epochs] for c in curves])
    mean, sd = scores.mean(0), scores.std(0, ddof=1) if len(scores) > 1 else np.full(epochs, np.nan)
    best = int(np.argmax(mean))
    return {"epochs_run": epochs, "per_epoch_mean": mean.tolist(), "per_epoch_sd": sd.tolist(),
            "chosen_epochs": best + 1, "mean": float(mean[best]), "sd": float(sd[best]),
            "per_fold": scores[:, best].tolist(), "last_epoch_mean": float(mean[-1]), "last_epoch_sd": float(sd[-1])}


def table(result: Dict) -> str:
    g = result["grouping"]
    partial = "" if len(result["folds_finished"]) == result["folds"] else \
        f" - ONLY {len(result['folds_finished'])} of the folds finished ({result['folds_finished']})"
    return "\n".join([
        f"{result['config']}{partial}: {result['folds']}-fold cross-validation on {g['images']} non-test images "
        f"({g['groups']} groups within {g['distance_bits']} bits; {g['images_in_shared_groups']} images share a "
        f"group, the largest has {g['largest_group']})",
        f"chosen epochs {result['chosen_epochs']}: {100 * result['mean']:.2f} ± {100 * result['sd']:.2f} % "
        f"(folds {', '.join(f'{100 * a:.1f}' for a in result['per_fold'])}); after all "
        f"{result['epochs_run']}: {100 * result['last_epoch_mean']:.2f} ± {100 * result['last_epoch_sd']:.2f} %",
        f"test images with a near-duplicate among them: {result['test_images_with_a_near_duplicate_in_the_pool']}"])


def recipes_table(run_dir: Path) -> str:
    """Every recipe cross-validated in <run_dir>/cv, best mean first, as a Markdown table: what
    the default is chosen by. Parameters are counted on the recipe's model (6 classes' head as
    the run's manifest has them); an epoch's time is the last fold's median, with where it ran."""
    from train.models import build_model
    from edge.config.model import ModelConfig

    found = [json.loads(p.read_text()) for p in sorted((run_dir / "cv").glob("*/cv.json"))]
    if not found:
        raise ConfigError(f"no cross-validated recipe in {run_dir / 'cv'}; run `scrapsort cv` first")
    classes = len(Manifest.load(run_dir / MANIFEST_NAME).classes)
    lines = ["| recipe | backbone, input | folds | chosen epochs | cross-validated top-1 (mean ± sd) | per fold (%) | "
             "epoch (median s, last fold) | parameters |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(found, key=lambda r: -r["mean"]):
        model = ModelConfig(**r["model"])
        parameters = sum(p.numel() for p in build_model(model, classes, load_weights=False).parameters())
        folds = f"{len(r['folds_finished'])} of {r['folds']}"
        spread = "–" if len(r["per_fold"]) < 2 else f"{100 * r['sd']:.2f}"
        timing = f"{np.median(r['seconds_per_epoch_last_fold']):.0f} ({r.get('last_fold_ran_on') or 'not recorded'})"
        lines.append(f"| {r['config']} | {model.backbone}, {model.input_size} px | {folds} | {r['chosen_epochs']} of "
                     f"{r['epochs_run']} | **{100 * r['mean']:.2f} ± {spread} %** | "
                     f"{', '.join(f'{100 * a:.1f}' for a in r['per_fold'])} | {timing} | {parameters / 1e6:.2f} M |")
    return "\n".join(lines)


def _test_twins(manifest: Manifest, hashes: Dict[str, int], pool: Sequence[Item], distance: int) -> int:
    """Test images within `distance` bits of a training image: how near the test split is to memory."""
    codes = np.array([hashes[i.sha256] for i in pool], dtype=np.uint64)
    return sum(1 for item in manifest.split("test")
               if len(codes) and int(np.bitwise_count(codes ^ np.uint64(hashes[item.sha256])).min()) <= distance)
