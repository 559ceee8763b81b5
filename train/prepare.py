"""`scrapsort prepare`: class-folder trees -> split manifest + data report.

Images are not copied. Every file is hashed and fully decoded once, so that corrupt or
truncated files, byte-identical duplicates (kept together in one split, so nothing leaks
from train into test) and the same bytes filed under two classes (a label conflict,
excluded) are found before any training.

An image's split is a function of its bytes (a seeded hash of its sha256), so adding images
never moves one that was there before, and a frozen test set (`--freeze-test`) stays the test
split whatever is added: models trained months apart are compared on the same images.
Review folders written by the operator page are added as further roots, with who filed each
image and when; their share that would be test forms the `review` split (this line's reviewed
items), or all of them with `hold_out_reviewed`.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from edge.config import Config
from edge.errors import DataError, ImageError
from edge.vision.dataset import MANIFEST_NAME, REVIEW_LOG, Item, Manifest, Root
from edge.vision.images import IMAGE_SUFFIXES, decode_image

SPLITS = ("train", "val", "test", "review")
REPORT_NAME = "data_report.json"
FROZEN_TEST_NAME = "frozen_test.json"


def prepare(config: Config, data_root: Path, out_dir: Path, progress: bool = True,
            review_roots: Sequence[Path] = (), hold_out_reviewed: bool = False) -> dict:
    """Scan, check and split `data_root` (plus review folders); writes manifest.json and
    data_report.json into out_dir, following the frozen test set if there is one."""
    roots = [Root(str(data_root.resolve()))] + [Root(str(Path(r).resolve()), "review") for r in review_roots]
    files, unknown_dirs = [], []
    for index, root in enumerate(roots):
        found, unknown = _scan(Path(root.path), config.classes, every_class=root.kind == "dataset")
        files += [(index, rel, label) for rel, label in found]
        unknown_dirs += [str(Path(root.path) / name) if index else name for name in unknown]
    hashes, corrupt = _hash_and_check(files, roots, progress)
    groups = defaultdict(list)  # sha256 -> [(root, relpath, label)]
    for key in files:
        if key[:2] in hashes:
            groups[hashes[key[:2]]].append(key)

    conflicts = {h: g for h, g in groups.items() if len({label for *_, label in g}) > 1}
    usable = {h: g for h, g in groups.items() if h not in conflicts}
    frozen_path = frozen_test_path(config)
    frozen = load_frozen_test(frozen_path) if frozen_path.is_file() else None
    assignment = assign_splits(usable, roots, config, frozen, hold_out_reviewed)
    reviewed = _review_records(roots)
    items = sorted((Item(rel, label, assignment[h], h, root, reviewed.get((root, rel)))
                    for h, g in usable.items() for root, rel, label in g),
                   key=lambda i: (i.root, i.label, i.path))

    manifest = Manifest(roots, list(config.classes), config.data.seed, items,
                        str(frozen_path) if frozen is not None else None)
    manifest.save(out_dir / MANIFEST_NAME)
    report = _report(manifest, corrupt, conflicts, usable, unknown_dirs)
    if frozen is not None:
        present = {item.sha256 for item in manifest.items}
        report["frozen_test"] = {"file": str(frozen_path), "images": len(frozen),
                                 "missing": sorted(e["path"] for sha, e in frozen.items() if sha not in present)}
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=1))
    return report


# -- splits -------------------------------------------------------------------------------------
def hash_fraction(sha256: str, seed: int) -> float:
    """Where an image falls in [0, 1): fixed by its bytes and the seed, nothing else."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_splits(groups: Dict[str, list], roots: List[Root], config: Config,
                  frozen: Optional[Dict[str, dict]], hold_out_reviewed: bool) -> Dict[str, str]:
    """sha256 -> split. [0, test) of the hash line is test (the `review` split for review folders),
    [test, test+val) val, the rest train. With a frozen test set, exactly its images are test and
    new images hashed into test train instead."""
    test, val, seed = config.data.test_fraction, config.data.val_fraction, config.data.seed
    assignment, dataset = {}, {}
    for sha, members in groups.items():
        u = hash_fraction(sha, seed)
        from_review = all(roots[root].kind == "review" for root, *_ in members)
        if not from_review:
            dataset[sha] = members
        if frozen is not None and sha in frozen:
            assignment[sha] = "test"
        elif from_review and (hold_out_reviewed or u < test):
            assignment[sha] = "review"
        elif u < test:
            assignment[sha] = "train" if frozen is not None else "test"
        else:
            assignment[sha] = "val" if u < test + val else "train"
    if frozen is None:
        _at_least_one_each(dataset, assignment, seed)
    return assignment


def _at_least_one_each(groups: Dict[str, list], assignment: Dict[str, str], seed: int) -> None:
    """A class of three or more images that the hash left without a val or test image gives
    its lowest-hash train image to it. Only such tiny classes can see an added image move one;
    review folders never do (they are not in `groups`)."""
    by_class = defaultdict(list)
    for sha, members in groups.items():
        by_class[members[0][-1]].append(sha)
    for shas in by_class.values():
        if sum(len(groups[s]) for s in shas) < 3:
            continue
        for split in ("test", "val"):
            if not any(assignment[s] == split for s in shas):
                spare = sorted((s for s in shas if assignment[s] == "train"), key=lambda s: hash_fraction(s, seed))
                if spare:
                    assignment[spare[0]] = split


def frozen_test_path(config: Config) -> Path:
    return Path(config.data.frozen_test) if config.data.frozen_test else config.run_path / FROZEN_TEST_NAME


def freeze_test(manifest: Manifest, path: Path) -> int:
    """Write the manifest's test split as the frozen test set; refuses to overwrite one."""
    if path.exists():
        raise DataError(f"{path}: a frozen test set exists already; models are compared on it. "
                        f"Delete it first to freeze a new one (older models then need re-evaluating)")
    test = manifest.split("test")
    entries = [{"sha256": i.sha256, "label": i.label, "path": str(manifest.absolute(i))} for i in test]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"frozen_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": manifest.seed,
                                "classes": manifest.classes, "items": entries}, indent=1))
    return len(entries)


def load_frozen_test(path: Path) -> Dict[str, dict]:
    try:
        data = json.loads(Path(path).read_text())
        return {entry["sha256"]: entry for entry in data["items"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable frozen test set ({exc}); restore it from a backup "
                        f"(models were compared on it) or delete it and freeze anew") from None


# -- scanning ------------------------------------------------------------------------------------
def _scan(root: Path, classes: Sequence[str], every_class: bool):
    """A review folder may hold only some classes; the dataset must have them all."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (give the TrashNet-style class-folder tree "
                        f"with --data DIR or data.root in the config, review folders with --review DIR)")
    present = [c for c in classes if (root / c).is_dir()]
    missing = [c for c in classes if c not in present]
    if missing and (every_class or not present):
        raise DataError(f"{root}: no folder for class(es) {', '.join(missing)}; expected one folder "
                        f"per class in the config")
    files = [(str(p.relative_to(root)), label)
             for label in present for p in sorted((root / label).rglob("*"))
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in classes)
    return files, unknown


def _hash_and_check(files, roots: List[Root], progress: bool):
    from tqdm import tqdm

    hashes, corrupt = {}, []
    for root, rel, _ in tqdm(files, desc="checking images", unit="img", disable=not progress):
        data = (Path(roots[root].path) / rel).read_bytes()
        try:
            decode_image(data, rel)
        except ImageError as exc:
            corrupt.append({"path": str(Path(roots[root].path) / rel) if root else rel, "reason": str(exc)})
            continue
        hashes[(root, rel)] = hashlib.sha256(data).hexdigest()
    return hashes, corrupt


def _review_records(roots: List[Root]) -> Dict[tuple, dict]:
    """(root, relpath) -> who filed it, when, and from which decision (the review log's lines)."""
    records = {}
    for index, root in enumerate(roots):
        log = Path(root.path) / REVIEW_LOG
        if root.kind != "review" or not log.is_file():
            continue
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
                records[(index, entry.pop("file"))] = entry
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a power loss: the image still counts, unattributed
    return records


def _report(manifest: Manifest, corrupt, conflicts, usable, unknown_dirs) -> dict:
    counts = {label: {s: 0 for s in SPLITS} for label in manifest.classes}
    for item in manifest.items:
        counts[item.label][item.split] += 1
    totals = {label: sum(c.values()) for label, c in counts.items()}
    largest = max(totals.values()) if totals else 0
    return {
        "data_root": manifest.data_root,
        "review_roots": [r.path for r in manifest.roots if r.kind == "review"],
        "reviewed_images": sum(1 for i in manifest.items if manifest.roots[i.root].kind == "review"),
        "images_used": len(manifest.items),
        "counts": counts,
        "imbalance": {label: round(n / largest, 3) if largest else 0 for label, n in totals.items()},
        "corrupt": corrupt,
        "duplicate_groups": [sorted(_shown(manifest, r, p) for r, p, _ in g) for g in usable.values() if len(g) > 1],
        "label_conflicts": [{"sha256": h, "files": [{"path": _shown(manifest, r, p), "class": c} for r, p, c in sorted(g)]}
                            for h, g in sorted(conflicts.items())],
        "unknown_folders": unknown_dirs,
    }


def _shown(manifest: Manifest, root: int, rel: str) -> str:
    """Paths in the dataset folder relative to it; a review folder's absolute."""
    return rel if root == 0 else str(Path(manifest.roots[root].path) / rel)


def format_report(report: dict) -> str:
    lines = [f"{'class':<12}{'train':>7}{'val':>6}{'test':>6}{'review':>8}{'total':>7}  share of largest"]
    for label, c in report["counts"].items():
        lines.append(f"{label:<12}{c['train']:>7}{c['val']:>6}{c['test']:>6}{c['review']:>8}{sum(c.values()):>7}"
                     f"  {report['imbalance'][label]:.2f}")
    lines.append(f"{report['images_used']} images used; {len(report['corrupt'])} corrupt skipped; "
                 f"{len(report['duplicate_groups'])} duplicate groups kept within one split; "
                 f"{len(report['label_conflicts'])} label conflicts excluded")
    if report["review_roots"]:
        lines.append(f"{report['reviewed_images']} reviewed images from {', '.join(report['review_roots'])}")
    frozen = report.get("frozen_test")
    if frozen:
        lines.append(f"test split frozen in {frozen['file']}: {frozen['images']} images"
                     + (f", {len(frozen['missing'])} of them missing from the folders now" if frozen["missing"] else ""))
    for bad in report["corrupt"]:
        lines.append(f"  corrupt: {bad['reason']}")
    for conflict in report["label_conflicts"]:
        where = ", ".join(f"{f['path']} ({f['class']})" for f in conflict["files"])
        lines.append(f"  label conflict (same bytes, different classes): {where}")
    if report["unknown_folders"]:
        lines.append(f"  ignored folders not in the config's classes: {', '.join(report['unknown_folders'])}")
    return "\n".join(lines)
