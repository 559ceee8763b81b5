"""`scrapsort evaluate`: any model the project produces, on a split of the manifest.

Runs batch 1 through the same backend interface and preprocessing as the edge loop, so
the numbers are those the belt will see. Writes metrics JSON, a confusion matrix PNG and,
for the training run, the loss/accuracy curves.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from tqdm import tqdm

from edge.config import Config
from edge.errors import ModelError
from edge.line.decision import Controls, Decider
from edge.vision import dataset
from edge.vision.backends import SUFFIXES
from edge.vision.dataset import MANIFEST_NAME, Manifest
from edge.vision.scoring import classification_report

log = logging.getLogger(__name__)


def predict_split(model_path: Path, manifest: Manifest, split: str, progress: bool = True):
    """dataset.predict_split with a progress bar. TensorRT's INT8 form is computed as written, as
    TensorRT computes it, on any CPU: ONNX Runtime's fused kernels (VNNI CPUs) would quantize its
    float layers too."""
    bar = functools.partial(tqdm, desc=f"evaluating {Path(model_path).name}", unit="img", disable=not progress)
    runs_on = SUFFIXES.get(Path(model_path).suffix.lower())
    exact = {"exact_int8": True} if runs_on == "onnxruntime" else {}
    return dataset.predict_split(model_path, manifest, split, progress=bar, **exact)


def evaluate(config: Config, model_path: Optional[str] = None, split: str = "test", progress: bool = True) -> Dict:
    from train.plots import plot_confusion_matrix, plot_history

    run_dir = config.run_path
    default = model_path is None
    model = Path(model_path) if model_path else run_dir / "best.pt"
    manifest = Manifest.load(run_dir / MANIFEST_NAME)
    logits, labels, about = predict_split(model, manifest, split, progress)
    metrics = classification_report(labels, logits.argmax(1).tolist(), manifest.classes)
    metrics.update({"model": str(model), "split": split, **about})

    suffix = "" if default else f"-{model.stem}"
    outputs = [run_dir / f"metrics{suffix}.json", run_dir / f"confusion_matrix{suffix}.png"]
    plot_confusion_matrix(metrics["confusion_matrix"], manifest.classes,
                          f"{model.name} on {split}: accuracy {metrics['accuracy']:.3f} (n={metrics['count']})",
                          outputs[1])
    history = run_dir / "history.json"
    if default and history.is_file():
        outputs.append(run_dir / "training_history.png")
        plot_history(json.loads(history.read_text()), outputs[-1])
    metrics["outputs"] = [str(p) for p in outputs]
    outputs[0].write_text(json.dumps(metrics, indent=1))
    return metrics


def bin_changes(config: Config, classes, reference: np.ndarray, logits: np.ndarray) -> Dict[str, int]:
    """What the line would do differently with `logits` instead of `reference`, decided as the
    line decides (the config's threshold and bins): items sent to another bin though both
    are sure (a sorting error), and items moved into or out of the reject bin (a manual check
    more or less). Disagreement between sure answers is what INT8 must not cause; items near
    the threshold may cross it either way."""
    decider = Decider(config, classes, Controls())
    reject = config.decision.reject_bin
    before = [decider.decide(row).bin for row in reference]
    after = [decider.decide(row).bin for row in logits]
    pairs = list(zip(before, after))
    return {"other_bin": sum(a != b and reject not in (a, b) for a, b in pairs),
            "to_reject": sum(a != reject and b == reject for a, b in pairs),
            "from_reject": sum(a == reject and b != reject for a, b in pairs)}


PRECISION_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx",
                   "int8-cpu": "model_int8_cpu.onnx"}


def compare_precisions(config: Config, split: str = "test", progress: bool = True) -> Dict:
    """FP32 / FP16 / INT8 ONNX side by side on one split: accuracy, per-class F1, agreement
    with FP32, the bins the line would change and the largest logit difference. Writes
    precision_comparison.{json,md}."""
    run_dir = config.run_path
    manifest = Manifest.load(run_dir / MANIFEST_NAME)
    present = {p: run_dir / f for p, f in PRECISION_FILES.items() if (run_dir / f).is_file()}
    if "fp32" not in present:
        raise ModelError(f"{run_dir / PRECISION_FILES['fp32']}: not found; run `scrapsort export` first")
    rows, reference = {}, None
    for precision, path in present.items():
        logits, labels, about = predict_split(path, manifest, split, progress)
        reference = logits if reference is None else reference
        report = classification_report(labels, logits.argmax(1).tolist(), manifest.classes)
        rows[precision] = {
            "model": str(path), "accuracy": report["accuracy"], "count": report["count"],
            "f1": {c: v["f1"] for c, v in report["per_class"].items()},
            "agreement_with_fp32": float(np.mean(logits.argmax(1) == reference.argmax(1))),
            "max_logit_diff_vs_fp32": float(np.abs(logits - reference).max()), "sha256": about["sha256"],
            "bins_vs_fp32": bin_changes(config, manifest.classes, reference, logits),
            "unfused_int8": about["unfused_int8"],
        }
    result = {"split": split, "classes": manifest.classes, "precisions": rows}
    (run_dir / "precision_comparison.json").write_text(json.dumps(result, indent=1))
    (run_dir / "precision_comparison.md").write_text(precision_table(result))
    return result


def precision_table(result: Dict) -> str:
    classes = result["classes"]
    head = ["precision", "top-1", "agree w/ FP32", "other bin / to reject / from reject", "max logit diff"] + \
        [f"F1 {c}" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for precision, row in result["precisions"].items():
        bins = row["bins_vs_fp32"]
        cells = [precision, f"{row['accuracy'] * 100:.2f}%", f"{row['agreement_with_fp32'] * 100:.2f}%",
                 f"{bins['other_bin']} / {bins['to_reject']} / {bins['from_reject']}",
                 f"{row['max_logit_diff_vs_fp32']:.4f}"] + [f"{row['f1'][c]:.3f}" for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    count = next(iter(result["precisions"].values()))["count"]
    note = (f"\n\n{result['split']} split, {count} images, ONNX Runtime CPU, batch 1. Bins as the line decides "
            f"them: 'other bin' counts items both precisions are sure of but send to different bins.\n")
    if any(row.get("unfused_int8") for row in result["precisions"].values()):
        note += ("int8 (TensorRT's Q/DQ form) ran as written, unfused: exact INT8 arithmetic with its float "
                 "layers in float, as TensorRT computes it.\n")
    return "\n".join(lines) + note
