"""`scrapsort calibrate`: FP16 and INT8 (Q/DQ) ONNX plus a legacy TensorRT cache.

INT8 variants (calibration method x first/last layers in float) are each measured on the
validation split against the FP32 model; the best is kept as model_int8.onnx. The test split
is never looked at here, so the test numbers of `evaluate --precisions` stay honest.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from onnxruntime.quantization.calibrate import load_tensors_data

from calibration.dataset import SET_NAME, CalibrationReader, load_set, preprocess_files, save_set, select_items
from calibration.fp16 import convert_fp16
from calibration.qdq import first_and_last_nodes, quantize_int8
from calibration.trt_cache import write_cache
from edge.backends import open_backend
from edge.config import Config
from edge.preprocess import PreprocessSpec
from train.evaluate import predict_split
from train.onnx_meta import input_name, stamp
from train.prepare import MANIFEST_NAME, Manifest

FP16_NAME, INT8_NAME, CACHE_NAME = "model_fp16.onnx", "model_int8.onnx", "calibration.cache"
REPORT_NAME = "calibration_report.json"


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

    reference, labels, _ = predict_split(fp32, manifest, "val", progress)
    int8_meta = replace(info, precision="int8").to_metadata()
    variants = []
    for method in cfg.methods:
        ranges = work / f"ranges-{method}.json"
        ranges.unlink(missing_ok=True)  # ranges belong to this model and set only
        for keep_float in (False, True) if cfg.try_float_first_last else (False,):
            name = f"int8-{method}{'-float-first-last' if keep_float else ''}"
            out = work / f"{name}.onnx"
            exclude = first_and_last_nodes(fp32) if keep_float else ()
            quantize_int8(fp32, out, reader, method, ranges, exclude, cfg.percentile)
            stamp(out, int8_meta)
            logits, _, _ = predict_split(out, manifest, "val", progress)
            variants.append(_score(name, method, keep_float, out, logits, reference, labels))
            print(f"{name}: validation accuracy {variants[-1]['val_accuracy']:.4f}, "
                  f"agreement with FP32 {variants[-1]['val_agreement']:.4f}", flush=True)

    best = max(variants, key=lambda v: (v["val_accuracy"], v["val_agreement"]))
    shutil.copyfile(best["path"], run_dir / INT8_NAME)
    tensors = load_tensors_data(work / f"ranges-{best['method']}.json").data
    written = write_cache({k: v.range_value for k, v in tensors.items()}, run_dir / CACHE_NAME, cfg.trt_cache_version)
    report = {"fp32": str(fp32), "fp16": str(run_dir / FP16_NAME), "int8": str(run_dir / INT8_NAME),
              "calibration_set": str(set_path), "calibration_images": len(files),
              "fp32_val_accuracy": float(np.mean(reference.argmax(1) == labels)),
              "chosen": best["name"], "variants": variants,
              "trt_cache": str(run_dir / CACHE_NAME), "trt_cache_tensors": written}
    (run_dir / REPORT_NAME).write_text(json.dumps(report, indent=1))
    return report


def _score(name, method, keep_float, path, logits, reference, labels) -> Dict:
    labels = np.asarray(labels)
    return {"name": name, "method": method, "float_first_last": keep_float, "path": str(path),
            "val_accuracy": float(np.mean(logits.argmax(1) == labels)),
            "val_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
            "val_max_logit_diff": float(np.abs(logits - reference).max())}
