"""A stand-in `tensorrt` module per release, made from the recorded API surface (<version>.json).

Every class, method, keyword, property and enum member that the code touches must exist in
that release's surface, or the stub raises AttributeError/TypeError as the real bindings would.
Behind the surface sits a small fake of what TensorRT does with the calls this project makes:
network flags, the ONNX parser (reads the real ONNX file), builder flags, timing caches that
belong to one device, the implicit-INT8 calibrator protocol, DLA cores, and engines whose
tensors are read from and written to the fake CUDA memory of `fake_cudart`. Every call is
recorded in `module.calls` as ("Class.method", args, kwargs).
"""
from __future__ import annotations

import json
import operator
import types
from pathlib import Path
from typing import Iterable

import numpy as np

HERE = Path(__file__).parent
RELEASES = {"8": "8.5.2", "8.6": "8.6.1", "10": "10.3.0", "11": "11.1"}


def surface_for(version: str) -> dict:
    major, minor = version.split(".")[:2]
    name = RELEASES.get(f"{major}.{minor}") or RELEASES[major]
    return json.loads((HERE / f"{name}.json").read_text())


class EnumValue:
    def __init__(self, enum: str, name: str, value: int):
        self.enum, self.name, self.value = enum, name, value

    def __int__(self):
        return self.value

    __index__ = __int__

    def __eq__(self, other):
        return isinstance(other, EnumValue) and (self.enum, self.name) == (other.enum, other.name)

    def __hash__(self):
        return hash((self.enum, self.name))

    def __repr__(self):
        return f"<{self.enum}.{self.name}: {self.value}>"


def make_enum(version: str, name: str, members: Iterable[str]):
    values = {m: EnumValue(name, m, i) for i, m in enumerate(members)}

    class Enum:
        def __getattr__(self, attr):
            raise AttributeError(f"TensorRT {version} has no {name}.{attr}")

        def __repr__(self):
            return f"<stub enum {name}>"

    enum = Enum()
    enum.__dict__.update(values)
    enum.__members__ = values
    return enum


class Guarded:
    """Attribute access limited to the recorded surface of one class of one release."""
    _api: dict = {}
    _trt = None

    def __getattribute__(self, name):
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        api, cls = object.__getattribute__(self, "_api"), type(self).__name__
        trt = object.__getattribute__(self, "_trt")
        if name in api["methods"]:
            return _checked(trt, f"{cls}.{name}", api["methods"][name], object.__getattribute__(self, name))
        if name in api["properties"] or name in api["readonly"] or name in api.get("enum_members", ()):
            return object.__getattribute__(self, name)
        raise AttributeError(f"TensorRT {trt.__version__}: '{cls}' object has no attribute '{name}'")

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            api, trt = type(self)._api, type(self)._trt
            if name in api["readonly"] or name not in api["properties"]:
                raise AttributeError(f"TensorRT {trt.__version__}: cannot set '{type(self).__name__}.{name}'")
            trt.calls.append((f"{type(self).__name__}.{name}=", (value,), {}))
        object.__setattr__(self, name, value)


def _checked(trt, qualified: str, keywords: list, method):
    def call(*args, **kwargs):
        unknown = set(kwargs) - set(keywords)
        if unknown or len(args) + len(kwargs) > len(keywords):
            raise TypeError(f"TensorRT {trt.__version__}: {qualified}() takes ({', '.join(keywords)}), "
                            f"got {len(args)} positional and {sorted(kwargs)}")
        trt.calls.append((qualified, args, kwargs))
        return method(*args, **kwargs)
    return call


# ---- fake behaviour, one class per bound TensorRT class ----------------------------------

class Logger:
    def __init__(self, min_severity=None):
        self._severity = min_severity


class TimingCache:
    def __init__(self, device: str, entries: int = 0):
        self._device, self._entries = device, entries

    def serialize(self):
        return json.dumps({"device": self._device, "entries": self._entries}).encode()


class Tensor:
    def __init__(self, name, shape, dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "dtype", dtype)


class Network:
    def __init__(self, trt, flags: int):
        self._trt, self._flags = trt, flags
        self._inputs, self._outputs, self._onnx_types = [], [], set()
        enum = trt.NetworkDefinitionCreationFlag
        self._flag_names = {m for m, v in enum.__members__.items() if flags & (1 << int(v))}

    @property
    def num_inputs(self):
        return len(self._inputs)

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_input(self, index):
        return self._inputs[index]

    def get_output(self, index):
        return self._outputs[index]

    def _explicit_batch(self):
        return self._trt._major >= 10 or "EXPLICIT_BATCH" in self._flag_names

    def _strongly_typed(self):
        return self._trt._major >= 11 or "STRONGLY_TYPED" in self._flag_names


class OnnxParser:
    def __init__(self, network, logger):
        self._network, self._errors = network, []

    @property
    def num_errors(self):
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index]

    def parse_from_file(self, model):
        import onnx

        net = self._network
        if not net._explicit_batch():
            self._errors.append("ONNX models need an explicit-batch network (EXPLICIT_BATCH flag)")
            return False
        try:
            graph = onnx.load(model).graph
        except Exception as exc:  # the real parser reports, it does not raise
            self._errors.append(f"ModelImporter.cpp: failed to parse ONNX model ({type(exc).__name__})")
            return False
        to_trt = {1: "FLOAT", 10: "HALF"}
        for value, where in [(v, net._inputs) for v in graph.input] + [(v, net._outputs) for v in graph.output]:
            kind = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
            where.append(self._network._trt._tensor(value.name, shape, getattr(net._trt.DataType, to_trt[kind.elem_type])))
        net._onnx_types = {to_trt.get(t.data_type, "OTHER") for t in graph.initializer}
        net._onnx_qdq = any(n.op_type == "QuantizeLinear" for n in graph.node)
        return True


class OptimizationProfile:
    def __init__(self):
        self._shapes = {}

    def set_shape(self, input, min, opt, max):
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))


class BuilderConfig:
    def __init__(self, trt):
        object.__setattr__(self, "_trt", trt)
        self._flags, self._cache, self._profiles, self._pools = set(), None, [], {}
        object.__setattr__(self, "DLA_core", -1)
        object.__setattr__(self, "default_device_type", trt.DeviceType.GPU)
        if "int8_calibrator" in type(self)._api["properties"]:
            object.__setattr__(self, "int8_calibrator", None)
        if "TF32" in trt.BuilderFlag.__members__:
            self._flags.add(trt.BuilderFlag.TF32)  # on by default where the GPU has it (Ampere, Orin)

    def set_flag(self, flag):
        self._flags.add(flag)

    def clear_flag(self, flag):
        self._flags.discard(flag)

    def get_flag(self, flag):
        return flag in self._flags

    def set_memory_pool_limit(self, pool, pool_size):
        self._pools[pool] = pool_size

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        if not data:
            return self._trt._guard(TimingCache, "ITimingCache", None)
        saved = json.loads(data)
        return self._trt._guard(TimingCache, "ITimingCache", saved["device"], saved["entries"])

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache._device not in (None, self._trt.device["name"]) and not ignore_mismatch:
            self._cache = None  # TensorRT drops a cache from another device and reports False
            return False
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


class Builder:
    def __init__(self, logger):
        pass

    @property
    def num_DLA_cores(self):
        return self._trt.device["dla_cores"]

    @property
    def platform_has_tf32(self):
        return True

    def create_network(self, flags=0):
        return self._trt._guard(Network, "INetworkDefinition", self._trt, flags)

    def create_builder_config(self):
        return self._trt._guard(BuilderConfig, "IBuilderConfig", self._trt)

    def create_optimization_profile(self):
        return self._trt._guard(OptimizationProfile, "IOptimizationProfile")

    def build_serialized_network(self, network, config):
        trt = self._trt
        flags = {f.name for f in config._flags}
        if network._strongly_typed() and flags & {"FP16", "INT8", "BF16"}:
            trt.log.append("strongly typed networks take no precision flags")
            return None
        calibrator = getattr(config, "int8_calibrator", None) if "int8_calibrator" in type(config)._api["properties"] else None
        if "INT8" in flags and not network._onnx_qdq and not self._calibrate(calibrator):
            return None
        if config._cache is not None:
            config._cache._device, config._cache._entries = trt.device["name"], config._cache._entries + 1
        precision = ("int8" if "INT8" in flags or network._onnx_qdq else
                     "fp16" if "FP16" in flags or "HALF" in network._onnx_types else "fp32")
        engine = {"stub_engine": trt.__version__, "device": trt.device["name"], "precision": precision,
                  "tf32": "TF32" in flags, "dla_core": config.DLA_core if config.default_device_type == trt.DeviceType.DLA else -1,
                  "tensors": [(t.name, list(t.shape), t.dtype.name, "INPUT") for t in network._inputs] +
                             [(t.name, list(t.shape), t.dtype.name, "OUTPUT") for t in network._outputs],
                  "profiles": [{k: v for k, v in p._shapes.items()} for p in config._profiles]}
        trt.built.append(engine)
        return memoryview(json.dumps(engine).encode())

    def _calibrate(self, calibrator) -> bool:
        """TensorRT reads the cache first; a cache for another version is skipped, then it asks
        for batches, and a calibrator with none fails the build."""
        trt = self._trt
        if calibrator is None:
            trt.log.append("INT8 without Q/DQ nodes needs a calibrator")
            return False
        cache = calibrator.read_calibration_cache()
        header = bytes(cache or b"").split(b"\n", 1)[0].decode(errors="replace")
        if header == f"TRT-{trt._version_code}-EntropyCalibration2":
            return True
        trt.log.append(f"calibration cache header '{header}' does not match this version: recalibrating")
        if calibrator.get_batch(["input"]) is None:
            trt.log.append("Calibration failure occurred with no scaling factors detected")
            return False
        return True


class Engine:
    def __init__(self, trt, blob: dict):
        self._trt, self._blob = trt, blob
        self._tensors = {name: (tuple(shape), dtype, mode) for name, shape, dtype, mode in blob["tensors"]}

    @property
    def num_io_tensors(self):
        return len(self._tensors)

    def get_tensor_name(self, index):
        return list(self._tensors)[index]

    def get_tensor_mode(self, name):
        return getattr(self._trt.TensorIOMode, self._tensors[name][2])

    def get_tensor_dtype(self, name):
        return getattr(self._trt.DataType, self._tensors[name][1])

    def get_tensor_shape(self, name):
        return self._tensors[name][0]

    def create_execution_context(self):
        return self._trt._guard(ExecutionContext, "IExecutionContext", self)


class ExecutionContext:
    def __init__(self, engine):
        self._engine, self._addresses, self._shapes = engine, {}, {}

    def set_input_shape(self, name, shape):
        profiles = self._engine._blob["profiles"]
        low, _, high = profiles[0][name] if profiles else (self._engine._tensors[name][0],) * 3
        ok = len(shape) == len(low) and all(lo <= s <= hi for s, lo, hi in zip(shape, low, high))
        if ok:
            self._shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name):
        shape = self._engine._tensors[name][0]
        if self._engine._tensors[name][2] == "INPUT":
            return self._shapes.get(name, shape)
        batch = next(iter(self._shapes.values()), (1,))[0]  # outputs follow the input's batch
        return tuple(batch if d == -1 else d for d in shape)

    def set_tensor_address(self, name, memory):
        self._addresses[name] = operator.index(memory)
        return True

    def execute_async_v3(self, stream_handle):
        operator.index(stream_handle)  # size_t in the binding: a cudaStream_t converts, None does not
        trt, engine = self._engine._trt, self._engine
        cudart = trt.cudart
        names = list(engine._tensors)
        if set(self._addresses) != set(names):
            trt.log.append(f"address is not set for {sorted(set(names) - set(self._addresses))}")
            return False
        (x_name, y_name) = names
        x_shape = self._shapes.get(x_name, engine._tensors[x_name][0])
        if -1 in x_shape:
            trt.log.append(f"input shape of {x_name} not set")
            return False
        x = np.frombuffer(cudart.read(self._addresses[x_name], 4 * int(np.prod(x_shape))), np.float32)
        classes = engine._tensors[y_name][0][-1]
        logits = np.array([x.mean() * (k + 1) for k in range(classes)], np.float32)
        cudart.write(self._addresses[y_name], logits.tobytes())
        return True


class Runtime:
    def __init__(self, logger):
        object.__setattr__(self, "DLA_core", 0)  # TensorRT's default: DLA core 0 unless told

    @property
    def num_DLA_cores(self):
        return self._trt.device["dla_cores"]

    def deserialize_cuda_engine(self, serialized_engine):
        trt = self._trt
        try:
            blob = json.loads(bytes(serialized_engine))
        except ValueError:
            trt.log.append("Serialization assertion failed: magic tag does not match")
            return None
        if blob["stub_engine"] != trt.__version__:
            trt.log.append(f"engine plan built with {blob['stub_engine']}, this is {trt.__version__}")
            return None
        engine = trt._guard(Engine, "ICudaEngine", trt, blob)
        engine._dla_core_used = self.DLA_core if blob["dla_core"] >= 0 else -1
        return engine


class IInt8EntropyCalibrator2:
    def __init__(self):
        pass


IMPLEMENTATIONS = {"Logger": Logger, "Builder": Builder, "Runtime": Runtime, "OnnxParser": OnnxParser,
                   "IInt8EntropyCalibrator2": IInt8EntropyCalibrator2}


def tensorrt_module(version: str = "10.3.0.30", device: str = "Orin", dla_cores: int = 0,
                    remove: Iterable[str] = (), cudart=None) -> types.ModuleType:
    """A `tensorrt` for `version` on a device; `remove` drops names ("Enum.MEMBER" or "Class")
    to play a later release that has taken them out."""
    api = surface_for(version)
    removed = set(remove)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt._major = int(version.split(".")[0])
    trt._version_code = _version_code(version)
    trt.calls, trt.log, trt.built = [], [], []
    trt.device = {"name": device, "dla_cores": dla_cores}
    trt.cudart = cudart
    for name, members in api["enums"].items():
        kept = [m for m in members if f"{name}.{m}" not in removed]
        setattr(trt, name, make_enum(version, name, kept))

    def guard(impl, api_name, *args):
        cls = _guarded_class(trt, api, api_name, impl)
        return cls(*args)

    trt._guard = guard
    trt._tensor = lambda name, shape, dtype: guard(Tensor, "ITensor", name, shape, dtype)
    for name, impl in IMPLEMENTATIONS.items():
        if name in api["classes"] and name not in removed:
            if name == "IInt8EntropyCalibrator2":
                setattr(trt, name, impl)  # subclassed by user code, as the real trampoline class
            else:
                setattr(trt, name, _guarded_class(trt, api, name, impl))
    return trt


def _guarded_class(trt, api: dict, name: str, impl):
    cache = trt.__dict__.setdefault("_classes", {})
    if name not in cache:
        entry = dict(api["classes"][name])
        for base in entry.get("bases", []):  # inherited members (Logger from ILogger)
            parent = api["classes"].get(base, {})
            entry["methods"] = {**parent.get("methods", {}), **entry["methods"]}
            entry["exported_enums"] = entry.get("exported_enums", []) + parent.get("exported_enums", [])
        attrs = {"_api": entry, "_trt": trt}
        for enum in entry.get("exported_enums", []):  # trt.Logger.WARNING
            attrs.update(getattr(trt, enum).__members__)
        cache[name] = type(name, (Guarded, impl), attrs)
    return cache[name]


def _version_code(version: str) -> int:
    """NV_TENSORRT_VERSION, written out here on purpose: the stub checks jetson/calibrator.py's
    header against its own reading of the rule, not against the code under test."""
    major, minor, patch = (int(p) for p in (version.split(".") + ["0", "0"])[:3])
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch

