"""Batch test: a model over labelled images (class folders in a folder or a zip), scored.

The same scoring as the workstation's `evaluate` (accuracy with its 95 % interval,
per-class precision/recall/F1, confusion matrix), plus every misclassified and unreadable
image with its top-3. A zip is read defensively: its names are never used as paths (each
image is written under a generated name), and the number of files and their declared and
real sizes are capped before anything is decompressed.
"""
from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from edge.errors import DataError, ImageError
from edge.vision.images import IMAGE_SUFFIXES, decode_image
from edge.vision.scoring import classification_report

MAX_PIXELS = 40_000_000  # checked from the header before decoding (a 12000x12000 image needs 430 MB)
MAX_FILES = 5000
MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class LabelledImage:
    name: str   # shown to the user: <class>/<file>
    label: str
    path: Path  # where it is read from (inside the folder, or the job's own copy of a zip entry)


def folder_images(root: Path, classes: Sequence[str]) -> Tuple[List[LabelledImage], List[str]]:
    """Images in <root>/<class>/ for the model's classes; other folders are listed as skipped."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of class folders")
    images, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in classes:
            skipped.append(f"{folder.name}/: not one of the model's classes")
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                images.append(LabelledImage(f"{folder.name}/{path.name}", folder.name, path))
    _check_count(images)
    return images, skipped


def zip_images(data: bytes, classes: Sequence[str], into: Path) -> Tuple[List[LabelledImage], List[str]]:
    """Images of a zip whose entries sit in class folders (at any depth: the folder holding the
    image names its class), copied into `into` under generated names."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DataError("the upload is not a zip file") from None
    entries = [e for e in archive.infolist() if not e.is_dir()]
    if len(entries) > MAX_FILES or sum(e.file_size for e in entries) > MAX_TOTAL_BYTES:
        raise DataError(f"the zip holds {len(entries)} files, {sum(e.file_size for e in entries) >> 20} MiB "
                        f"unpacked: at most {MAX_FILES} files and {MAX_TOTAL_BYTES >> 20} MiB")
    into.mkdir(parents=True, exist_ok=True)
    images, skipped = [], []
    for entry in entries:
        parts = PurePosixPath(entry.filename.replace("\\", "/")).parts
        label = parts[-2] if len(parts) >= 2 else ""
        suffix = PurePosixPath(parts[-1]).suffix.lower() if parts else ""
        if suffix not in IMAGE_SUFFIXES or label not in classes or entry.file_size > MAX_IMAGE_BYTES:
            skipped.append(f"{entry.filename}: " + ("not an image" if suffix not in IMAGE_SUFFIXES else
                                                    f"folder '{label}' is not a class" if label not in classes
                                                    else "larger than 25 MiB"))
            continue
        with archive.open(entry) as source:
            content = source.read(MAX_IMAGE_BYTES + 1)  # the declared size may lie
        if len(content) > MAX_IMAGE_BYTES:
            skipped.append(f"{entry.filename}: larger than 25 MiB")
            continue
        target = into / f"{len(images):05d}{suffix}"
        target.write_bytes(content)
        images.append(LabelledImage(f"{label}/{parts[-1]}", label, target))
    _check_count(images)
    return images, skipped


def _check_count(images: List[LabelledImage]) -> None:
    if not images:
        raise DataError("no images of the model's classes found: expected <class>/<image> entries")
    if len(images) > MAX_FILES:
        raise DataError(f"{len(images)} images: a batch test takes at most {MAX_FILES}")


def evaluate_images(classify: Callable, images: Sequence[LabelledImage], classes: Sequence[str],
                    progress: Optional[Callable[[int, int], None]] = None,
                    cancelled: Callable[[], bool] = lambda: False) -> Dict:
    """`classify(image) -> {"class", "confidence", "top"}` over every image; the report."""
    results = []
    for done, item in enumerate(images, 1):
        if cancelled():
            break
        try:
            prediction = classify(_read(item))
            results.append({"index": done - 1, "name": item.name, "label": item.label, "predicted": prediction["class"],
                            "confidence": prediction["confidence"], "top3": prediction["top"]})
        except ImageError as exc:
            results.append({"index": done - 1, "name": item.name, "label": item.label, "error": str(exc)})
        if progress:
            progress(done, len(images))
    scored = [r for r in results if "error" not in r]
    report = classification_report([classes.index(r["label"]) for r in scored],
                                   [classes.index(r["predicted"]) for r in scored], classes)
    report.update(images=results, unreadable=[r for r in results if "error" in r],
                  misclassified=[r for r in scored if r["predicted"] != r["label"]])
    return report


def _read(item: LabelledImage):
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{item.name}: cannot read ({exc.strerror})") from None
    return decode_image(data, item.name, max_pixels=MAX_PIXELS)


def results_csv(report: Dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image", "label", "predicted", "confidence", "correct", "top3", "error"])
    for r in report["images"]:
        top3 = " | ".join(f"{t['class']}:{t['confidence']:.4f}" for t in r.get("top3", []))
        writer.writerow([r["name"], r["label"], r.get("predicted", ""),
                         f"{r['confidence']:.4f}" if "confidence" in r else "",
                         int(r.get("predicted") == r["label"]), top3, r.get("error", "")])
    return out.getvalue()


def summary_text(report: Dict) -> str:
    """Accuracy, per-class table and the confusion matrix as text (the CLI's output)."""
    low, high = report["accuracy_ci95"]
    classes = report["classes"]
    lines = [f"accuracy {report['accuracy']:.4f} ({report['correct']}/{report['count']}; 95% interval "
             f"{low:.3f}-{high:.3f}), {len(report['unreadable'])} unreadable", "",
             f"{'class':<12} {'precision':>9} {'recall':>7} {'F1':>6} {'n':>5}"]
    for name, m in report["per_class"].items():
        lines.append(f"{name:<12} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>5}")
    width = max(6, *(len(c) for c in classes)) + 1
    lines += ["", "confusion matrix (rows: true class, columns: predicted)",
              " " * width + "".join(f"{c[:width - 1]:>{width}}" for c in classes)]
    for name, row in zip(classes, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{n:>{width}}" for n in row))
    return "\n".join(lines)
