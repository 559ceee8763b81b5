"""FP16 ONNX: weights and compute in half precision, inputs and outputs kept FP32.

Keeping I/O in FP32 means the edge loop's buffers and preprocessing are identical for every
precision; ops that overflow in FP16 stay in FP32 (ONNX Runtime's default block list).
"""
from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir
from onnxruntime.transformers.float16 import convert_float_to_float16


def convert_fp16(fp32: Path, out: Path) -> None:
    model = onnx.load(str(fp32))
    half = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends its input Casts at the end; TensorRT's parser wants a sorted graph.
    graph = onnx_ir.serde.deserialize_model(half)
    graph.graph.sort()
    half = onnx_ir.serde.serialize_model(graph)
    onnx.checker.check_model(half, full_check=True)
    onnx.save(half, str(out))
