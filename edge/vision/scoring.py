"""Scores from logits, in plain numpy (the edge box evaluates engines without torch): the
ranked classes every caller shows (the one top-k), and the classification report."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from edge.stats import wilson_interval


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def ranked(logits: np.ndarray, classes: Sequence[str], top: int = 3) -> List[Dict]:
    """The `top` most likely classes, best first: [{"class": name, "confidence": probability}]."""
    probs = softmax(np.asarray(logits, np.float64))
    return [{"class": classes[i], "confidence": float(probs[i])} for i in np.argsort(-probs)[:top]]


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def classification_report(labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str]) -> Dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, confusion matrix."""
    matrix = confusion_matrix(labels, predictions, len(classes))
    true_pos = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    total, correct = int(support.sum()), int(true_pos.sum())
    weights = support / total if total else np.zeros_like(true_pos)
    return {
        "count": total,
        "correct": correct,
        "accuracy": correct / total if total else 0.0,
        "accuracy_ci95": list(wilson_interval(correct, total)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(classes)},
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {"precision": float((precision * weights).sum()), "recall": float((recall * weights).sum()),
                     "f1": float((f1 * weights).sum())},
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
    }
