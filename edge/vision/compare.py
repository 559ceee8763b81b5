"""`scrapsort compare A B`: is model B better than model A on this line's images?

Both models classify the same images: the frozen test set (or the manifest's test split) and
the line's reviewed items (the manifest's `review` split). Per slice: accuracy with its 95 %
interval, per-class F1, every image where they disagree, and the exact McNemar test on the
images only one of them got right. The verdict is written as JSON and markdown:
- promote: B is better with p < alpha on a slice, and worse on none;
- keep: B is worse with p < alpha on a slice, or no slice shows a difference (a model is not
  swapped on a coin toss);
- unfair: a model trained on images of the comparison; nothing can be concluded.
Needs only the runtime (no torch): it runs on the edge box too.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from edge.errors import DataError, ImageError, ModelError
from edge.stats import mcnemar_exact
from edge.vision.backends import open_backend
from edge.vision.dataset import MANIFEST_NAME, Manifest
from edge.vision.images import read_image
from edge.vision.predict import Classifier
from edge.vision.scoring import classification_report

log = logging.getLogger(__name__)
DEFAULT_MODEL = "model.onnx"


@dataclass(frozen=True)
class Image:
    path: Path
    label: str
    sha256: str


def model_path(given: Path) -> Path:
    """A run dir means its exported model; a file is taken as it is."""
    path = Path(given)
    return path / DEFAULT_MODEL if path.is_dir() else path


def slices(manifest: Manifest, frozen_file: Optional[Path] = None) -> Dict[str, List[Image]]:
    """The images to compare on: the frozen test set when there is one, else the test split;
    and the reviewed items when the manifest has them."""
    frozen_file = frozen_file or (Path(manifest.frozen_test) if manifest.frozen_test else None)
    if frozen_file is not None:
        try:
            entries = json.loads(Path(frozen_file).read_text())["items"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{frozen_file}: unreadable frozen test set ({exc})") from None
        test = [Image(Path(e["path"]), e["label"], e["sha256"]) for e in entries]
    else:
        test = [Image(manifest.absolute(i), i.label, i.sha256) for i in manifest.split("test")]
    found = {"test": test, "review": [Image(manifest.absolute(i), i.label, i.sha256) for i in manifest.split("review")]}
    return {name: images for name, images in found.items() if images}


def trained_on(run: Path, images: Iterable[Image]) -> int:
    """How many of `images` a run's manifest put in train or val (0 when it has no manifest)."""
    manifest = Path(run) / MANIFEST_NAME
    if not Path(run).is_dir() or not manifest.is_file():
        return 0
    seen = {i.sha256 for i in Manifest.load(manifest).items if i.split in ("train", "val")}
    return sum(1 for image in images if image.sha256 in seen)


def predictions(path: Path, images: List[Image], progress: Callable[[Iterable], Iterable] = iter) -> Dict:
    """sha256 -> predicted class name, for every image that reads; and the model's description."""
    out = {}
    with open_backend(path) as backend:
        classifier = Classifier(backend)
        for image in progress(images):
            try:
                out[image.sha256] = classifier.classify(read_image(image.path), top=1)["class"]
            except ImageError as exc:
                log.warning("skipped: %s", exc)
        about = {"model": str(path), "sha256": backend.info.sha256, "classes": list(backend.info.classes)}
    return {"predicted": out, "about": about}


def compare_slice(images: List[Image], a: Dict[str, str], b: Dict[str, str], alpha: float) -> Dict:
    scored = [i for i in images if i.sha256 in a and i.sha256 in b]  # the same images for both
    classes = sorted({i.label for i in scored} | set(a.values()) | set(b.values()))
    truth = [classes.index(i.label) for i in scored]
    reports = {name: classification_report(truth, [classes.index(p[i.sha256]) for i in scored], classes)
               for name, p in (("a", a), ("b", b))}
    only_a = sum(1 for i in scored if a[i.sha256] == i.label != b[i.sha256])
    only_b = sum(1 for i in scored if b[i.sha256] == i.label != a[i.sha256])
    p_value = mcnemar_exact(only_a, only_b)
    return {
        "images": len(scored),
        "accuracy": {k: r["accuracy"] for k, r in reports.items()},
        "accuracy_ci95": {k: r["accuracy_ci95"] for k, r in reports.items()},
        "f1": {c: {k: reports[k]["per_class"][c]["f1"] for k in reports} for c in classes},
        "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": p_value,
        "better": ("b" if only_b > only_a else "a") if p_value < alpha else None,
        "disagreements": [{"path": str(i.path), "truth": i.label, "a": a[i.sha256], "b": b[i.sha256]}
                          for i in scored if a[i.sha256] != b[i.sha256]],
    }


def verdict(result: Dict, alpha: float) -> Dict:
    unfair = {k: n for k, n in result["trained_on"].items() if n}
    if unfair:
        return {"promote": False, "verdict": "unfair",
                "reason": "; ".join(f"model {k.upper()} trained on {n} of the comparison's images" for k, n in unfair.items())
                          + ": compare on a test set neither saw (prepare --freeze-test before training)"}
    better = {name: s["better"] for name, s in result["slices"].items()}
    worse = [name for name, who in better.items() if who == "a"]
    gains = [name for name, who in better.items() if who == "b"]
    if worse:
        return {"promote": False, "verdict": "keep",
                "reason": f"B is worse on {', '.join(worse)} (McNemar p < {alpha})"}
    if gains:
        return {"promote": True, "verdict": "promote",
                "reason": f"B is better on {', '.join(gains)} (McNemar p < {alpha}) and worse on none"}
    return {"promote": False, "verdict": "keep",
            "reason": f"no slice shows a difference at p < {alpha}: B is not shown better"}


def compare(a: Path, b: Path, manifest: Manifest, out_dir: Path, frozen_file: Optional[Path] = None,
            alpha: float = 0.05, progress: Callable[[Iterable], Iterable] = iter) -> Dict:
    chosen = slices(manifest, frozen_file)
    if not chosen:
        raise DataError("nothing to compare on: the manifest has no test or review images "
                        "(run `scrapsort prepare`, with --review DIR for the line's reviewed items)")
    everything = [image for images in chosen.values() for image in images]
    runs = {"a": model_path(a), "b": model_path(b)}
    for path in runs.values():
        if not path.is_file():
            raise ModelError(f"{path}: no model to compare (give a run dir with {DEFAULT_MODEL}, or a model file)")
    scored = {k: predictions(path, everything, progress) for k, path in runs.items()}
    result = {
        "a": scored["a"]["about"], "b": scored["b"]["about"], "alpha": alpha,
        "trained_on": {k: trained_on(given, everything) for k, given in (("a", a), ("b", b))},
        "slices": {name: compare_slice(images, scored["a"]["predicted"], scored["b"]["predicted"], alpha)
                   for name, images in chosen.items()},
    }
    result["recommendation"] = verdict(result, alpha)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(result, indent=1))
    (out_dir / "compare.md").write_text(markdown(result))
    return result


def markdown(result: Dict) -> str:
    rec = result["recommendation"]
    lines = [f"# Model comparison: {rec['verdict'].upper()}", "", rec["reason"] + ".", "",
             f"- A: `{result['a']['model']}` (sha256 {result['a']['sha256'][:12]})",
             f"- B: `{result['b']['model']}` (sha256 {result['b']['sha256'][:12]})", ""]
    for name, s in result["slices"].items():
        ci = {k: f"{100 * lo:.1f}-{100 * hi:.1f}" for k, (lo, hi) in s["accuracy_ci95"].items()}
        lines += [f"## {name} ({s['images']} images)", "",
                  "| | accuracy | 95 % interval |", "|---|---|---|",
                  f"| A | {100 * s['accuracy']['a']:.2f} % | {ci['a']} % |",
                  f"| B | {100 * s['accuracy']['b']:.2f} % | {ci['b']} % |", "",
                  f"Only A right: {s['only_a_right']}; only B right: {s['only_b_right']}; "
                  f"exact McNemar p = {s['mcnemar_p']:.4f}.", "",
                  "| class | F1 A | F1 B |", "|---|---|---|"]
        lines += [f"| {c} | {f['a']:.3f} | {f['b']:.3f} |" for c, f in s["f1"].items()]
        lines += ["", f"{len(s['disagreements'])} images where they disagree:", ""]
        lines += [f"- `{d['path']}`: truth {d['truth']}, A {d['a']}, B {d['b']}" for d in s["disagreements"][:50]]
        lines.append("")
    return "\n".join(lines)
