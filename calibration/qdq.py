"""Explicit INT8 quantization with ONNX Runtime's quantizer, in two forms from one calibration.

- TensorRT's form (model_int8.onnx): symmetric INT8 activations and weights (zero point 0),
  per-channel weight scales. TensorRT 8.5 .. 11 build it; ONNX Runtime runs it exactly, but
  on x86 CPUs without VNNI only unfused (its fused kernels would saturate, see
  edge.vision.backends.onnxruntime.int8_kernels_saturate).
- ONNX Runtime's CPU form (model_int8_cpu.onnx): unsigned asymmetric activations and 7-bit
  per-channel weights, which x86 fused kernels (U8S8) run fast without saturating.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Sequence

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

from calibration.dataset import CalibrationReader

METHODS = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
           "max": CalibrationMethod.MinMax}


def quantizable_nodes(model_path: Path) -> List[str]:
    """Convolutions and the classifier: the layers whose INT8 precision matters."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def non_quantizable_nodes(model_path: Path) -> List[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type not in ("Conv", "Gemm", "MatMul")]


def compute_ranges(fp32: Path, reader: CalibrationReader, method: str, ranges_cache: Path,
                   percentile: float = 99.999, symmetric: bool = True, chunk: int = 16) -> None:
    """Activation ranges over the calibration set, fed in chunks: ONNX Runtime's histogram
    calibrators keep every intermediate tensor of what they are given in memory at once
    (300 images of EfficientNet-Lite0 would need ~18 GB), while their histograms accumulate
    across calls."""
    with tempfile.TemporaryDirectory(prefix="scrapsort-calib-") as tmp:
        calibrator = create_calibrator(str(fp32), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=METHODS[method],
                                       extra_options={"symmetric": symmetric, "percentile": percentile})
        for start in range(0, len(reader.batches), chunk):
            calibrator.collect_data(CalibrationReader(reader.input_name, reader.batches[start:start + chunk]))
        save_tensors_data(calibrator.compute_data(), ranges_cache)


# TensorRT's form: symmetric signed activations, float weights behind a Q/DQ pair (as
# NVIDIA's own exporters write them). ONNX Runtime's x86 form: unsigned activations with
# their own (asymmetric) ranges and 7-bit integer weights, so every Conv fuses into a U8S8
# kernel that cannot saturate.
# TensorRT takes float biases and folds them into its kernels; the x86 form carries int32 biases,
# so ONNX Runtime need not make them at load time (its pass for that would also quantize the
# layers left in float, edge.vision.backends.onnxruntime.KEEP_AS_WRITTEN).
FORMS = {
    "tensorrt": {"symmetric": True, "activation_type": QuantType.QInt8, "reduce_range": False,
                 "extra": {"AddQDQPairToWeight": True, "QuantizeBias": False}},
    "cpu": {"symmetric": False, "activation_type": QuantType.QUInt8, "reduce_range": True,
            "extra": {"QuantizeBias": True}},
}


def quantize_int8(source: Path, out: Path, reader: CalibrationReader, method: str, ranges_cache: Path,
                  exclude: Sequence[str] = (), percentile: float = 99.999, form: str = "tensorrt") -> None:
    """Write a Q/DQ INT8 model; activation ranges are computed once per method and form, and cached."""
    settings = FORMS[form]
    if not ranges_cache.is_file():
        compute_ranges(source, reader, method, ranges_cache, percentile, settings["symmetric"])
    quantize_static(
        str(source), str(out), None,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=settings["reduce_range"],
        activation_type=settings["activation_type"],
        weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method],
        nodes_to_exclude=list(exclude),
        calibration_cache_path=str(ranges_cache),
        # ONNX Runtime must not widen weight scales to fit int32 biases: it did so by up to
        # 10^27 on BN-folded depthwise channels and wiped them out.
        extra_options={"ActivationSymmetric": settings["symmetric"], "WeightSymmetric": True,
                       "QDQDisableWeightAdjustForInt32Bias": True, **settings["extra"]},
    )
