"""ONNX Runtime backend with IO binding onto preallocated numpy buffers.

Execution providers come as an ordered list (TensorRT EP, CUDA EP, CPU): ONNX Runtime gives
each node to the first provider that takes it. A provider this onnxruntime build lacks, or one
that fails to load (missing CUDA/TensorRT libraries), is skipped with a warning, and
`runs_on` says which provider actually runs the model.
"""
from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge.vision.backends.base import INT32_BIASES_KEY, Backend, ModelInfo
from edge.deps import require
from edge.errors import ModelError

log = logging.getLogger(__name__)
# model_int8.onnx carries TensorRT's form (signed, symmetric INT8 activations);
# model_int8_cpu.onnx ("int8-cpu") is quantized for ONNX Runtime's x86 kernels.
TENSORRT_INT8, CPU_INT8 = "int8", "int8-cpu"
# ONNX Runtime (1.32 here) quantizes the float weights of a convolution whose input comes from a
# DequantizeLinear (its WeightBiasQuantization pass), so a layer calibration left in float
# would run in INT8 after all, where TensorRT runs it in float. It is off unless a fused INT8
# path needs the int32 biases it makes from float ones (TensorRT's form on a CPU with VNNI, an
# x86-form file without int32 biases). ONNX Runtime ignores an optimizer name it does not have.
KEEP_AS_WRITTEN = ("WeightBiasQuantization",)
_warned_unfused = set()  # one warning per model file, not one per session (calibration opens many)


def int8_kernels_saturate(machine: Optional[str] = None, cpu_flags: Optional[set] = None) -> bool:
    """True on x86 CPUs without VNNI: there ONNX Runtime's fused INT8 kernels multiply with
    VPMADDUBSW, whose 16-bit pair sums saturate for full-range 8-bit weights, and a
    compact network's accuracy collapses (OpenVINO documents the same for its kernels)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return False
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.lru_cache(maxsize=1)  # read once per process: calibration opens dozens of INT8 models
def _cpu_flags() -> frozenset:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()  # unknown: assume the worst


Provider = Union[str, Tuple[str, Dict]]
CPU = "CPUExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
MISSING_PROVIDER = {
    TENSORRT_EP: "needs onnxruntime-gpu built with TensorRT (on a Jetson: the JetPack wheel) and TensorRT's libraries",
    "CUDAExecutionProvider": "needs onnxruntime-gpu (on a Jetson: the JetPack wheel) and the CUDA libraries",
}


def choose_providers(requested: Sequence[Provider], available: Sequence[str]) -> List[Tuple[str, Dict]]:
    """The requested providers this onnxruntime has, in order, each with its options; CPU last
    as the fallback for nodes no other provider takes."""
    chosen = []
    for entry in requested:
        name, options = (entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        if name in available:
            chosen.append((name, options))
        else:
            log.warning("%s is not in this onnxruntime (it has %s): it %s; skipped", name, ", ".join(available),
                        MISSING_PROVIDER.get(name, "is not installed"))
    if CPU not in [name for name, _ in chosen]:
        chosen.append((CPU, {}))
    return chosen


def tensorrt_ep_options(path: Path, precision: str, options: Dict) -> Dict:
    """Engine and timing caches beside the model (a restart does not rebuild), and the precision
    the ONNX file carries: FP16 kernels for the FP16 model, INT8 from the Q/DQ nodes of the
    INT8 model (FP16 for its float layers). The config's options win."""
    cache = str(path.parent / "ort_trt_cache")
    defaults = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache, "trt_fp16_enable": precision in ("fp16", TENSORRT_INT8),
                "trt_int8_enable": precision == TENSORRT_INT8}
    return {**defaults, **options}


# How ONNX Runtime's intra-op threads wait for work. "always" (its default): they busy-wait
# between parallel sections and for a while after each run; "off": they sleep and are woken
# for each section (a futex wake per operator, ~2-3 ms a run on a 2-core VM); "during_run":
# they spin inside a run and stop at its end, so the camera thread gets the cores between runs.
SPINNING = {
    "always": {"session.intra_op.allow_spinning": "1"},
    "off": {"session.intra_op.allow_spinning": "0"},
    "during_run": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, providers: Sequence[Provider] = (CPU,), threads: int = 0,
                 spinning: str = "always", exact_int8: bool = False):
        """exact_int8: run TensorRT's INT8 form on the CPU as written (unfused) on any CPU, not
        only where the fused kernels saturate: what TensorRT computes, for calibration and
        precision comparisons; the line keeps the fused kernels where they are exact enough."""
        ort = require("onnxruntime", "ort")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        for key, value in SPINNING[spinning].items():
            options.add_session_config_entry(key, value)
        options.log_severity_level = 3
        chosen = choose_providers(providers, ort.get_available_providers())
        if chosen[0][0] == TENSORRT_EP:  # its options depend on the model's precision, read first on the CPU
            precision = ModelInfo.from_metadata(path, self._open(ort, path, options, [CPU]).get_modelmeta()
                                                .custom_metadata_map).precision
            chosen[0] = (TENSORRT_EP, tensorrt_ep_options(Path(path), precision, chosen[0][1]))
        self.session = self._open(ort, path, options, chosen, KEEP_AS_WRITTEN)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(path, metadata)
        self.providers = self.session.get_providers()
        self._report_providers(path, [name for name, _ in chosen])
        self.unfused_int8 = (self.info.precision == TENSORRT_INT8 and self.runs_on == CPU
                             and (exact_int8 or int8_kernels_saturate()))
        if self.unfused_int8:
            self.session = self._open_unfused(ort, path, options, chosen, warn=not exact_int8)
        elif self._fused_int8_needs_float_biases_quantized(metadata):
            self.session = self._open(ort, path, options, chosen)
        self._check_io(path)
        self.input = np.zeros(self.expected_input_shape(), np.float32)
        self.output = np.zeros((1, len(self.info.classes)), np.float32)
        self._binding = self.session.io_binding()
        self._binding.bind_input(self._input_name, "cpu", 0, np.float32, self.input.shape, self.input.ctypes.data)
        self._binding.bind_output(self._output_name, "cpu", 0, np.float32, self.output.shape, self.output.ctypes.data)

    @property
    def runs_on(self) -> str:
        """The provider that runs the model (the first one ONNX Runtime registered)."""
        return self.providers[0]

    def _report_providers(self, path: Path, asked: List[str]) -> None:
        failed = [name for name in asked if name not in self.providers]
        if failed:
            log.warning("%s: %s did not load (see ONNX Runtime's message above); running on %s", path,
                        ", ".join(failed), self.runs_on)
        log.info("%s runs on %s", path, " -> ".join(self.providers))

    @staticmethod
    def _open(ort, path: Path, options, providers, disabled_optimizers=()):
        try:
            return ort.InferenceSession(str(path), options, providers=providers,
                                        disabled_optimizers=list(disabled_optimizers))
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({exc}); re-export with `scrapsort export`") from None

    def _fused_int8_needs_float_biases_quantized(self, metadata: Dict[str, str]) -> bool:
        """ONNX Runtime's fused CPU kernels take int32 biases: TensorRT's form has float ones, and
        so has an x86-form file that does not say otherwise."""
        if self.runs_on != CPU:
            return False
        precision = self.info.precision
        return precision == TENSORRT_INT8 or (precision == CPU_INT8 and metadata.get(INT32_BIASES_KEY) != "true")

    def _open_unfused(self, ort, path: Path, options, providers, warn: bool = True):
        """Exact Q/DQ arithmetic (what TensorRT computes), without the saturating fused kernels."""
        if warn and str(path) not in _warned_unfused:
            _warned_unfused.add(str(path))
            log.warning("%s: TensorRT-form INT8 on an x86 CPU without VNNI: running its Q/DQ graph unfused "
                        "(exact but slow). For INT8 speed on this CPU use model_int8_cpu.onnx", path)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return self._open(ort, path, options, providers, KEEP_AS_WRITTEN)

    def _check_io(self, path: Path) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        spec, out = inputs[0], outputs[0]
        expected = self.expected_input_shape()
        shape_ok = len(spec.shape) == 4 and all(not isinstance(d, int) or d == e for d, e in zip(spec.shape, expected))
        if spec.type != "tensor(float)" or not shape_ok:
            raise ModelError(f"{path}: input '{spec.name}' is {spec.type} {spec.shape}, but the metadata says "
                             f"float32 {list(expected)}; re-export the model")
        if out.shape[-1] not in (len(self.info.classes), None) and isinstance(out.shape[-1], int):
            raise ModelError(f"{path}: output has {out.shape[-1]} classes, metadata lists {len(self.info.classes)}")
        self._input_name, self._output_name = spec.name, out.name

    def infer(self) -> np.ndarray:
        self.session.run_with_iobinding(self._binding)
        return self.output[0]

    def close(self) -> None:
        self._binding = None
        self.session = None
