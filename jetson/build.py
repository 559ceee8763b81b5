"""`scrapsort build`: ONNX -> TensorRT engine for this device, with its metadata sidecar.

One code path for TensorRT 8.5/8.6 (JetPack 5), 10.x (JetPack 6, x86) and 11.x: strongly
typed networks where TensorRT has them (precision comes from the ONNX file: FP16 types,
Q/DQ nodes), builder flags only for the weakly typed 8.x networks.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from edge.vision.backends.base import file_sha256
from edge.config import Config
from edge.errors import ConfigError, ModelError
from edge.files import atomic_write
from jetson.metadata import EngineMetadata, Runtime, this_runtime
from jetson.trt import has_strong_typing, import_tensorrt, logger, major

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}


def engine_path(run_dir: Path, precision: str) -> Path:
    return run_dir / f"model_{precision}.engine"


def onnx_for(precision: str, strongly_typed: bool, int8_mode: str, run_dir: Path) -> Path:
    """Which ONNX a precision is built from. Weakly typed TensorRT (8.x) takes FP16 as a
    builder flag on the FP32 graph; strongly typed TensorRT takes it from the FP16 graph."""
    if precision == "fp16" and not strongly_typed:
        return run_dir / ONNX_FILES["fp32"]
    if precision == "int8" and int8_mode == "calibration_cache":
        return run_dir / ONNX_FILES["fp32"]
    return run_dir / ONNX_FILES[precision]


def precision_for_runtime(config: Config) -> Optional[str]:
    """The precision of the engine the line config runs (None: it runs ONNX, no engine)."""
    model = Path(config.runtime.model or config.run_path / "model.onnx")
    if model.suffix not in (".engine", ".plan"):
        return None
    for precision in PRECISIONS:
        if model.stem.endswith(precision):
            return precision
    raise ConfigError(f"runtime.model: cannot tell the precision of {model}; name it model_<fp32|fp16|int8>.engine")


def build(config: Config, precision: str, onnx: Optional[str] = None, out: Optional[str] = None,
          if_needed: bool = False) -> Path:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}")
    trt = import_tensorrt()
    cfg, run_dir = config.engine, config.run_path
    implicit_int8 = precision == "int8" and cfg.int8_mode == "calibration_cache"
    if implicit_int8 and major(trt) >= 11:
        raise ConfigError("engine.int8_mode: calibration_cache needs TensorRT 8.x/10.x; TensorRT "
                          f"{trt.__version__} only builds INT8 from the Q/DQ ONNX: set engine.int8_mode: qdq, "
                          "then make engine PRECISION=int8")
    typed = has_strong_typing(trt) and not implicit_int8
    onnx_path = Path(onnx) if onnx else onnx_for(precision, typed, cfg.int8_mode, run_dir)
    if not onnx_path.is_file():
        step = "scrapsort export" if precision == "fp32" or not typed else "scrapsort calibrate"
        raise ModelError(f"{onnx_path}: not found; run `{step}` first (make calibrate)")
    target = Path(out) if out else engine_path(run_dir, precision)
    if if_needed and _matches(target, onnx_path):
        print(f"{target} matches TensorRT {trt.__version__}, this GPU and {onnx_path}: nothing to build")
        return target

    log = logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(_network_flags(trt, typed))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it: {errors}. Export it again "
                         "(scrapsort export, then scrapsort calibrate for FP16/INT8) with this project's exporter")
    builder_config = _builder_config(trt, builder, network, config, precision, typed, implicit_int8)
    timing_cache = Path(cfg.timing_cache) if cfg.timing_cache else run_dir / "timing.cache"
    _use_timing_cache(builder_config, timing_cache)

    started = time.monotonic()
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build {precision} from {onnx_path}; the reason is in its log above. "
                         f"To see the failing layer: trtexec --onnx={onnx_path} --verbose")
    atomic_write(target, bytes(serialized))
    _sidecar(trt, network, onnx_path, precision, typed, cfg.dla_core).save(target)
    cache = builder_config.get_timing_cache()
    if cache is not None:
        atomic_write(timing_cache, bytes(cache.serialize()))
    print(f"built {target} in {time.monotonic() - started:.0f} s (timing cache {timing_cache})")
    return target


def _use_timing_cache(builder_config, path: Path) -> None:
    """Reuse the tactic timings of earlier builds. A cache from another device or TensorRT
    version is refused by TensorRT (set_timing_cache returns False and the config then has
    none): start an empty one, which this build fills and saves over the old file."""
    cache = builder_config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if builder_config.set_timing_cache(cache, ignore_mismatch=False):
        return
    log.warning("%s: timing cache from another device or TensorRT version; starting an empty one "
                "(this build takes longer and replaces it)", path)
    if not builder_config.set_timing_cache(builder_config.create_timing_cache(b""), ignore_mismatch=False):
        raise ModelError(f"TensorRT refused an empty timing cache; set engine.timing_cache to a writable new "
                         f"file or delete {path}")


def _network_flags(trt, typed: bool) -> int:
    flags = 0
    if major(trt) < 10:  # explicit batch is the only mode from 10 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if typed and major(trt) < 11:  # 11 is always strongly typed
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _builder_config(trt, builder, network, config: Config, precision: str, typed: bool, implicit_int8: bool):
    cfg = config.engine
    bc = builder.create_builder_config()
    bc.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        bc.clear_flag(trt.BuilderFlag.TF32)  # on by default on Ampere/Orin: FP32 must mean FP32 here
    if not typed:  # weakly typed (TensorRT 8.x, or 10.x implicit INT8): precision by flags
        if precision in ("fp16", "int8"):
            bc.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            bc.set_flag(trt.BuilderFlag.INT8)
        if implicit_int8:
            from jetson.calibrator import cache_calibrator

            bc.int8_calibrator = cache_calibrator(trt, config.run_path / "calibration.cache")
    if cfg.dla_core >= 0:
        if builder.num_DLA_cores <= cfg.dla_core:
            raise ConfigError(f"engine.dla_core: {cfg.dla_core} requested, this device has "
                              f"{builder.num_DLA_cores} DLA core(s); set engine.dla_core: -1")
        bc.default_device_type = trt.DeviceType.DLA
        bc.DLA_core = cfg.dla_core
        bc.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    tensor = network.get_input(0)
    if tensor.shape[0] == -1:  # dynamic-batch ONNX: batch 1 optimised, up to max_batch allowed
        _, c, h, w = tensor.shape
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, (1, c, h, w), (1, c, h, w), (cfg.max_batch, c, h, w))
        bc.add_optimization_profile(profile)
    return bc


def _sidecar(trt, network, onnx_path: Path, precision: str, typed: bool, dla_core: int) -> EngineMetadata:
    from edge.vision.backends import open_backend

    here = this_runtime(trt)
    with open_backend(onnx_path) as onnx_model:  # the ONNX metadata travels into the sidecar
        info = onnx_model.info
    return EngineMetadata(
        tensorrt=trt.__version__, gpu=here.gpu, compute_capability=here.compute_capability, module=here.module,
        precision=precision,
        onnx_path=str(onnx_path), onnx_sha256=file_sha256(onnx_path),
        input_shape=list(network.get_input(0).shape), output_shape=list(network.get_output(0).shape),
        classes=list(info.classes), preprocess=info.preprocess.to_json(),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), strongly_typed=typed, dla_core=dla_core)


def _matches(engine: Path, onnx_path: Path) -> bool:
    from jetson.metadata import check_match

    if not engine.is_file():
        return False
    try:
        check_match(EngineMetadata.load(engine), runtime(), engine, file_sha256(onnx_path))
    except ModelError as exc:
        print(f"rebuilding: {exc}")
        return False
    return True


def runtime() -> Runtime:
    return this_runtime(import_tensorrt())
