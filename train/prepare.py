"""`scrapsort prepare`: class-folder tree -> split manifest + data report.

Images are not copied. Every file is hashed and fully decoded once, so that corrupt or
truncated files, byte-identical duplicates (kept together in one split, so nothing leaks
from train into test) and the same bytes filed under two classes (a label conflict,
excluded) are found before any training.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Sequence

from edge.config import Config
from edge.errors import DataError, ImageError
from edge.vision.dataset import MANIFEST_NAME, Item, Manifest
from edge.vision.images import IMAGE_SUFFIXES, decode_image

SPLITS = ("train", "val", "test")
REPORT_NAME = "data_report.json"


def prepare(config: Config, data_root: Path, out_dir: Path, progress: bool = True) -> dict:
    """Scan, check and split `data_root`; writes manifest.json and data_report.json into out_dir."""
    files, unknown_dirs = _scan(data_root, config.classes)
    hashes, corrupt = _hash_and_check(files, data_root, progress)
    groups = defaultdict(list)  # sha256 -> [(relpath, label)]
    for rel, label in files:
        if rel in hashes:
            groups[hashes[rel]].append((rel, label))

    conflicts = {h: g for h, g in groups.items() if len({label for _, label in g}) > 1}
    usable = {h: g for h, g in groups.items() if h not in conflicts}
    assignment = _stratified_split(usable, config)
    items = sorted((Item(rel, label, assignment[h], h) for h, g in usable.items() for rel, label in g),
                   key=lambda i: (i.label, i.path))

    manifest = Manifest(str(data_root.resolve()), list(config.classes), config.data.seed, items)
    manifest.save(out_dir / MANIFEST_NAME)
    report = _report(manifest, corrupt, conflicts, usable, unknown_dirs)
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=1))
    return report


def _scan(root: Path, classes: Sequence[str]):
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (give the TrashNet-style class-folder tree "
                        f"with --data DIR or data.root in the config)")
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise DataError(f"{root}: no folder for class(es) {', '.join(missing)}; expected one folder "
                        f"per class in the config")
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in classes)
    files = [(str(p.relative_to(root)), label)
             for label in classes for p in sorted((root / label).rglob("*"))
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return files, unknown


def _hash_and_check(files, root: Path, progress: bool):
    from tqdm import tqdm

    hashes, corrupt = {}, []
    for rel, _ in tqdm(files, desc="checking images", unit="img", disable=not progress):
        data = (root / rel).read_bytes()
        try:
            decode_image(data, rel)
        except ImageError as exc:
            corrupt.append({"path": rel, "reason": str(exc)})
            continue
        hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes, corrupt


def _stratified_split(groups: Dict[str, list], config: Config) -> Dict[str, str]:
    """Per class, whole duplicate groups go to test, then val, until each holds its fraction."""
    rng = random.Random(config.data.seed)
    by_class = defaultdict(list)
    for sha, members in sorted(groups.items()):
        by_class[members[0][1]].append(sha)
    assignment = {}
    for label in sorted(by_class):
        shas = by_class[label]
        rng.shuffle(shas)
        total = sum(len(groups[s]) for s in shas)
        wanted = {"test": _share(total, config.data.test_fraction), "val": _share(total, config.data.val_fraction)}
        taken = Counter()
        for sha in shas:
            split = next((s for s in ("test", "val") if taken[s] < wanted[s]), "train")
            assignment[sha] = split
            taken[split] += len(groups[sha])
    return assignment


def _share(total: int, fraction: float) -> int:
    """Round, but keep at least one image per class in val/test once a class has three."""
    return max(round(total * fraction), 1 if total >= 3 else 0)


def _report(manifest: Manifest, corrupt, conflicts, usable, unknown_dirs) -> dict:
    counts = {label: {s: 0 for s in SPLITS} for label in manifest.classes}
    for item in manifest.items:
        counts[item.label][item.split] += 1
    totals = {label: sum(c.values()) for label, c in counts.items()}
    largest = max(totals.values()) if totals else 0
    return {
        "data_root": manifest.data_root,
        "images_used": len(manifest.items),
        "counts": counts,
        "imbalance": {label: round(n / largest, 3) if largest else 0 for label, n in totals.items()},
        "corrupt": corrupt,
        "duplicate_groups": [sorted(p for p, _ in g) for g in usable.values() if len(g) > 1],
        "label_conflicts": [{"sha256": h, "files": [{"path": p, "class": c} for p, c in sorted(g)]}
                            for h, g in sorted(conflicts.items())],
        "unknown_folders": unknown_dirs,
    }


def format_report(report: dict) -> str:
    lines = [f"{'class':<12}{'train':>7}{'val':>6}{'test':>6}{'total':>7}  share of largest"]
    for label, c in report["counts"].items():
        lines.append(f"{label:<12}{c['train']:>7}{c['val']:>6}{c['test']:>6}{sum(c.values()):>7}"
                     f"  {report['imbalance'][label]:.2f}")
    lines.append(f"{report['images_used']} images used; {len(report['corrupt'])} corrupt skipped; "
                 f"{len(report['duplicate_groups'])} duplicate groups kept within one split; "
                 f"{len(report['label_conflicts'])} label conflicts excluded")
    for bad in report["corrupt"]:
        lines.append(f"  corrupt: {bad['reason']}")
    for conflict in report["label_conflicts"]:
        where = ", ".join(f"{f['path']} ({f['class']})" for f in conflict["files"])
        lines.append(f"  label conflict (same bytes, different classes): {where}")
    if report["unknown_folders"]:
        lines.append(f"  ignored folders not in the config's classes: {', '.join(report['unknown_folders'])}")
    return "\n".join(lines)
