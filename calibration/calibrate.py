"""`scrapsort calibrate`: FP16 and INT8 (Q/DQ) ONNX plus a legacy TensorRT cache.

INT8 variants are measured against the FP32 model on the selection set: every non-test image
the calibration did not use (train and val: thousands of images, not the ~200 of val, so a
1-point difference is not noise; agreement needs no label, so images the model trained on
count as well). Each calibration method is tried on the model as trained and on the model
with its biases corrected for INT8's shifts (calibration/bias_correction.py), every layer
quantized. Where none of those agrees with FP32 on `min_agreement` of the images and loses at
most `max_drop` accuracy, each is tried again with the layers most sensitive to INT8 (measured
one by one) left in float, fewest first. Then (calibration.qat.when: always; or only where no
variant meets the bounds) the model is fine-tuned with INT8 simulated (calibration/qat.py) and
its weights quantized the same ways; it learns from the calibration images and a share of the
selection images, set aside before any variant is scored, so every variant is judged on the
same images none of them learned from. The variant that agrees best with the FP32 model.onnx
is kept as model_int8.onnx (TensorRT's form); model_int8_cpu.onnx is the same calibration in
ONNX Runtime's fast x86 form, with the same layers in float. The test split is never looked at
here, so the test numbers of `evaluate --precisions` stay honest.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from onnxruntime.quantization.calibrate import load_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from calibration.bias_correction import bias_corrected, layer_means, sequentially_corrected
from calibration.dataset import (SET_NAME, CalibrationReader, load_set, preprocess_files, save_set, select_items,
                                 stratified_share)
from calibration.fp16 import convert_fp16
from calibration.qat import quantization_aware_finetune
from calibration.qdq import non_quantizable_nodes, quantizable_nodes, quantize_int8
from calibration.trt_cache import write_cache
from edge.vision.backends import open_backend
from edge.vision.backends.base import INT32_BIASES_KEY
from edge.config import Config
from edge.vision.preprocess import PreprocessSpec
from train.checkpoint import BEST
from train.evaluate import bin_changes, predict_split
from train.onnx_meta import input_name, stamp
from edge.vision.dataset import MANIFEST_NAME, Manifest

FP16_NAME, INT8_NAME, CACHE_NAME = "model_fp16.onnx", "model_int8.onnx", "calibration.cache"
INT8_CPU_NAME, QAT_NAME = "model_int8_cpu.onnx", "model_qat.onnx"
FORM_PRECISIONS = {"tensorrt": "int8", "cpu": "int8-cpu"}  # quantize_int8 form -> model metadata precision
REPORT_NAME = "calibration_report.json"
BIAS_CORRECTED = "bc-"  # the name prefix of the variants of the bias-corrected model


def calibrate(config: Config, model_path: Optional[str] = None, set_path: Optional[str] = None,
              progress: bool = True) -> Dict:
    cfg, run_dir = config.calibration, config.run_path
    fp32 = Path(model_path) if model_path else run_dir / "model.onnx"
    with open_backend(fp32) as backend:
        info = backend.info
    manifest = Manifest.load(run_dir / MANIFEST_NAME)
    work = run_dir / "calibration"
    work.mkdir(parents=True, exist_ok=True)

    if set_path is None:  # a fresh set, described with the preprocessing the config asks for
        set_path = run_dir / SET_NAME
        spec = PreprocessSpec.for_backbone(config.model.backbone, config.model.input_size,
                                           config.preprocess.normalisation)
        save_set(set_path, manifest, select_items(manifest, cfg.images, cfg.seed), spec)
    files = load_set(Path(set_path), info)  # refuses a set prepared differently from the model
    reader = CalibrationReader(input_name(fp32), preprocess_files(files, info.preprocess, progress))

    convert_fp16(fp32, run_dir / FP16_NAME)
    stamp(run_dir / FP16_NAME, replace(info, precision="fp16").to_metadata())

    source = _prepared(fp32, work / "model_prepared.onnx")
    # The fine-tuning starts from the run's checkpoint, the one `export` wrote model.onnx from.
    own_model = fp32.resolve() == (run_dir / "model.onnx").resolve()
    can_fine_tune = own_model and cfg.qat.epochs > 0
    selection, aside = set_aside(selection_set(manifest, files), cfg.qat.learn_share if can_fine_tune else 0.0,
                                 cfg.seed)
    judge = Judge(fp32, [selection, aside], lambda ref, out: bin_changes(config, manifest.classes, ref, out), progress)

    def good_enough(variant: Dict) -> bool:
        return variant["agreement"] >= cfg.min_agreement and variant["accuracy"] >= judge.fp32_accuracy - cfg.max_drop
    metadata = {form: replace(info, precision=precision).to_metadata() for form, precision in FORM_PRECISIONS.items()}
    metadata["cpu"][INT32_BIASES_KEY] = "true"

    corrected_models = set()  # their Q/DQ files get step 2 of bias correction too

    def quantized(name: str, method: str, exclude, form: str = "tensorrt", model: Path = source) -> Path:
        """`model` quantized in one form, with the layers in `exclude` left in float."""
        out = work / f"{name}.onnx"
        quantize_int8(model, out, reader, method, _ranges(work, method, form, model), exclude, cfg.percentile, form)
        if model in corrected_models:
            sequentially_corrected(out, out, means, step_two)
        stamp(out, metadata[form])
        return out

    def trial(name: str, method: str, exclude, *, on: Manifest):
        """Quantize the model in TensorRT's form and return (file, its logits on `on`'s images)."""
        out = quantized(name, method, exclude)
        return out, predict_split(out, on, "val", progress=False)[0]

    def scored(name: str, method: str, float_layers, form: str = "tensorrt", model: Path = source,
               fresh: bool = False) -> Dict:
        if fresh:  # ranges belong to this model and set only: measured anew on each run
            _ranges(work, method, form, model).unlink(missing_ok=True)
        out = quantized(name, method, float_layers, form, model)
        variant = judge.scored({"name": name, "method": method, "float_layers": list(float_layers),
                                "path": str(out), "source": str(model)})
        _print(variant)
        return variant

    # The model as trained, and (calibration.bias_correction) with its biases corrected for the
    # weights' rounding and, once quantized, for the shifts measured layer by layer: each is
    # quantized with every method and every layer INT8. Layers stay in float (which costs latency
    # on the device) only where none of those meets the bounds.
    models, means = {"": source}, None
    if cfg.bias_correction:
        means = layer_means(source, reader)  # the same for both forms' corrections
        step_two = spread(reader, cfg.bias_correction_images)
        models[BIAS_CORRECTED] = bias_corrected(source, work / "model_bias_corrected.onnx", means)
        corrected_models.add(models[BIAS_CORRECTED])
    variants = [scored(f"{prefix}int8-{method}", method, [], model=model, fresh=True)
                for method in cfg.methods for prefix, model in models.items()]
    ranking, scores = None, None
    if cfg.max_float_layers and not any(good_enough(v) for v in variants):
        # which layers hurt most when quantized alone (once, on a subset)
        ranking, scores = _sensitivity(selection, work, cfg.methods[0], source, trial, cfg.sensitivity_images)
        for method in cfg.methods:
            for prefix, model in models.items():
                for count in range(1, min(cfg.max_float_layers, len(ranking)) + 1):
                    variants.append(scored(f"{prefix}int8-{method}-float-{count}", method, ranking[:count], model=model))
                    if good_enough(variants[-1]):
                        break
    qat, learned, post_training = None, [], _best(variants)
    fine_tune = cfg.qat.epochs and (cfg.qat.when == "always" or not good_enough(post_training))
    if fine_tune and not own_model:
        print(f"no quantization-aware fine-tuning: it starts from {run_dir / BEST}, and {fp32} is not that "
              f"run's model.onnx", flush=True)
    elif fine_tune:
        learned = [manifest.absolute(i) for i in aside.items]
        judge.leave_out_set_aside(variants)  # from here on every variant is judged on the rest alone
        qat = _prepared(quantization_aware_finetune(config, run_dir / BEST, manifest, files, work / QAT_NAME,
                                                    info.to_metadata(), progress, also_learn=learned),
                        work / "model_qat_prepared.onnx")
        floats = post_training["float_layers"]  # the fine-tuned model also with those layers in float
        for method in cfg.methods:
            variants.append(scored(f"qat-int8-{method}", method, [], model=qat, fresh=True))
            if floats:
                variants.append(scored(f"qat-int8-{method}-float-{len(floats)}", method, floats, model=qat))
    best = _best(variants)
    shutil.copyfile(best["path"], run_dir / INT8_NAME)

    # ONNX Runtime's x86 form of the same model with the same layers in float; each method is
    # tried again, since asymmetric ranges differ from the symmetric ones. Its weights round to
    # 7 bits: a corrected model is corrected for that grid.
    corrected = best["name"].startswith(BIAS_CORRECTED)
    cpu_source = bias_corrected(source, work / "model_bias_corrected_cpu.onnx", means, "cpu") if corrected \
        else Path(best["source"])
    if corrected:
        corrected_models.add(cpu_source)
    cpu_variants = [scored(f"{BIAS_CORRECTED if corrected else ''}int8-cpu-{method}", method, best["float_layers"],
                           "cpu", cpu_source, True) for method in cfg.methods]
    cpu_best = _best(cpu_variants)
    shutil.copyfile(cpu_best["path"], run_dir / INT8_CPU_NAME)
    cpu_int8 = {**cpu_best, "path": str(run_dir / INT8_CPU_NAME), "variants": cpu_variants}

    # The legacy cache goes with model.onnx (implicit INT8 builds from it), so it holds the best
    # post-training ranges of that model even where the fine-tuned one was kept for Q/DQ.
    cached = _best([v for v in variants if v["source"] == str(source)])
    tensors = load_tensors_data(_ranges(work, cached["method"], "tensorrt", source)).data
    written = write_cache({k: v.range_value for k, v in tensors.items()}, run_dir / CACHE_NAME, cfg.trt_cache_version)
    report = {"fp32": str(fp32), "fp16": str(run_dir / FP16_NAME), "int8": str(run_dir / INT8_NAME),
              "calibration_set": str(set_path), "calibration_images": len(files),
              "selection_images": judge.images, "fine_tuning_learned_from": [str(f) for f in learned],
              "fp32_accuracy": judge.fp32_accuracy, "sensitivity_ranking": ranking,
              "sensitivity": scores,
              "chosen_good_enough": good_enough(best), "qat_model": str(work / QAT_NAME) if qat else None,
              "qat_float_layers_from": post_training["name"] if qat else None,
              "chosen": best["name"], "variants": variants, "int8_cpu": cpu_int8,
              "trt_cache": str(run_dir / CACHE_NAME), "trt_cache_tensors": written, "trt_cache_from": cached["name"]}
    (run_dir / REPORT_NAME).write_text(json.dumps(report, indent=1))
    return report


def spread(reader: CalibrationReader, images: int) -> CalibrationReader:
    """At most `images` of the reader's, evenly spread over it (the set is stratified by class)."""
    step = max(1, -(-len(reader.batches) // images))
    return CalibrationReader(reader.input_name, reader.batches[::step][:images])


def _prepared(fp32: Path, out: Path) -> Path:
    """The FP32 graph as the quantizer should see it: constants folded and the exporter's
    explicit 'same' padding merged into the convolutions (ONNX Runtime's own pre-processing).
    A Pad left between two Q/DQ pairs keeps ONNX Runtime from fusing the INT8 kernels."""
    quant_pre_process(str(fp32), str(out))
    return out


def _ranges(work: Path, method: str, form: str, model: Path) -> Path:
    """Cached activation ranges of one model: symmetric for TensorRT's form, asymmetric for the
    CPU form."""
    prefix = "" if model.stem == "model_prepared" else f"{model.stem}-"
    return work / f"{prefix}ranges-{method}{'' if form == 'tensorrt' else '-asymmetric'}.json"


def _sensitivity(manifest: Manifest, work: Path, method: str, model: Path, trial,
                 images: int) -> Tuple[List[str], Dict]:
    """Quantizable layers ordered by how far quantizing each alone moves the logits from FP32's
    (mean squared difference, on `images` of the selection set spread over it). Changed answers
    are what the bound counts, but on a few dozen images most layers change none, and a layer
    may flip one borderline image while barely moving the rest: the distance ranks them all.
    Layers that move nothing are left out.
    Returns (the ranking, each layer's scores)."""
    pool = manifest.split("val")
    subset = manifest.subset(pool[::max(1, len(pool) // images)][:images])  # spread over the classes
    reference = predict_split(model, subset, "val", progress=False)[0]
    nodes = quantizable_nodes(model)
    agreement, distance = {}, {}
    for i, node in enumerate(nodes):
        _, logits = trial("sensitivity", method, [n for n in nodes if n != node] + non_quantizable_nodes(model),
                          on=subset)
        agreement[node] = float(np.mean(logits.argmax(1) == reference.argmax(1)))
        distance[node] = float(np.mean((logits - reference) ** 2))
        print(f"sensitivity {i + 1}/{len(nodes)}: {node} agreement {agreement[node]:.3f} "
              f"distance {distance[node]:.5f}", flush=True)
    (work / "sensitivity.onnx").unlink(missing_ok=True)
    ranking = [n for n in sorted(nodes, key=lambda n: -distance[n]) if distance[n] > 0]
    return ranking, {n: {"agreement": agreement[n], "distance": distance[n]} for n in nodes}


def selection_set(manifest: Manifest, calibration_files) -> Manifest:
    """Every train and val image the calibration did not use, as one split (named val here)."""
    used = {str(Path(f)) for f in calibration_files}
    pool = manifest.split("train") + manifest.split("val")
    return manifest.subset([replace(i, split="val") for i in pool if str(manifest.absolute(i)) not in used])


def set_aside(selection: Manifest, share: float, seed: int) -> Tuple[Manifest, Manifest]:
    """(the selection images, a stratified `share` of them set aside for quantization-aware
    fine-tuning to learn from beside the calibration images). Post-training variants are judged
    on both; if fine-tuning runs, every variant is judged again on the first alone, images none
    of them learned from."""
    learned = stratified_share(selection.items, share, seed)
    taken = {(i.root, i.path) for i in learned}
    return selection.subset([i for i in selection.items if (i.root, i.path) not in taken]), selection.subset(learned)


class Judge:
    """FP32's answers on the selection images, and variants scored against them. Logits are
    kept per variant, so that all can be scored again on fewer images."""

    def __init__(self, fp32: Path, parts: List[Manifest], bins, progress: bool):
        self.parts, self.bins, self.logits = [p for p in parts if p.items], bins, {}
        self.reference, self.labels, first = self._predict(fp32, progress)
        self.images, self._first = len(self.labels), first

    @property
    def fp32_accuracy(self) -> float:
        return float(np.mean(self.reference[:self.images].argmax(1) == self.labels[:self.images]))

    def scored(self, variant: Dict) -> Dict:
        """`variant` (a dict with the INT8 file's "path") with its agreement, accuracy and bins."""
        logits = self.logits[variant["name"]] = self._predict(Path(variant["path"]))[0]
        return {**variant, **self._score(logits)}

    def leave_out_set_aside(self, variants: List[Dict]) -> None:
        """Judge on the first part alone from now on, `variants` included."""
        self.images = self._first
        for variant in variants:
            variant.update(self._score(self.logits[variant["name"]]))

    def _score(self, logits: np.ndarray) -> Dict:
        ref, logits, labels = self.reference[:self.images], logits[:self.images], self.labels[:self.images]
        return {"accuracy": float(np.mean(logits.argmax(1) == labels)),
                "agreement": float(np.mean(logits.argmax(1) == ref.argmax(1))),
                "max_logit_diff": float(np.abs(logits - ref).max()), "bins": self.bins(ref, logits),
                "judged_on": self.images}

    def _predict(self, model: Path, progress: bool = False) -> Tuple[np.ndarray, np.ndarray, int]:
        found = [predict_split(model, part, "val", progress) for part in self.parts]
        return (np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]).astype(int),
                len(found[0][1]))


def _best(variants: List[Dict]) -> Dict:
    """Closest to FP32 (the answers the model was validated with); at equal agreement, the
    more accurate."""
    return max(variants, key=lambda v: (v["agreement"], v["accuracy"]))


def _print(variant: Dict) -> None:
    bins = variant["bins"]
    print(f"{variant['name']}: agreement with FP32 {variant['agreement']:.4f}, "
          f"accuracy {variant['accuracy']:.4f} on {variant['judged_on']} selection images; items the line "
          f"would send to another bin: {bins['other_bin']}, to the reject bin: {bins['to_reject']}, out of it: "
          f"{bins['from_reject']}", flush=True)
