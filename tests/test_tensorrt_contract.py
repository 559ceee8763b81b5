"""The build and runtime paths against each TensorRT release's recorded API (8.5, 8.6, 10.3, 11.1).

These run everywhere: a stub `tensorrt` made from tests/tensorrt_api/<release>.json refuses any
name its release does not have, and fakes what TensorRT does with the calls made here; a fake
cuda-python runtime checks every copy against its allocation and finds leaks. What a real GPU
adds is in test_jetson.py (marked `tensorrt`).
"""
import json
import shutil
import sys

import numpy as np
import pytest

from edge.cli import main
from edge.errors import ModelError
from edge.vision.backends import open_backend
from jetson.metadata import EngineMetadata
from tests.conftest import calibrated_copy, write_config
from tests.tensorrt_api.fake_cudart import FakeCudart, cudaStream_t
from tests.tensorrt_api.stub import tensorrt_module

RELEASES = ["8.5.2.2", "8.6.1.6", "10.3.0.30", "11.1.0.8"]


@pytest.fixture(scope="module")
def engine_run(trained_run, tmp_path_factory):
    """A run with every ONNX TensorRT builds from and the legacy calibration cache."""
    _, run = calibrated_copy(trained_run, tmp_path_factory.mktemp("engines"), images=12, methods=["max"],
                             max_drop=-1.0)
    return run, trained_run[1].parent / "data"


class Device:
    """One stub TensorRT release and one fake GPU installed for the code under test."""

    def __init__(self, monkeypatch, tmp_path, engine_run, version, gpu="Orin", dla_cores=0, remove=(), fail=None):
        import jetson.cuda

        self.cudart = FakeCudart(gpu, fail=fail)
        self.trt = tensorrt_module(version, device=gpu, dla_cores=dla_cores, remove=remove, cudart=self.cudart)
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        monkeypatch.setattr(jetson.cuda, "cudart", self.cudart)
        template, self.data = engine_run
        self.run = tmp_path / "run"
        if not self.run.exists():  # the files an engine build reads; not the variants or checkpoints (disk)
            shutil.copytree(template, self.run, ignore=shutil.ignore_patterns("calibration", "*.pt", "model.ts"))
        self.tmp_path = tmp_path

    def config(self, **engine):
        return write_config(self.tmp_path / "line.yaml", self.data, self.run, engine=engine)

    def build(self, precision, **engine):
        return main(["build", "--config", str(self.config(**engine)), "--precision", precision])

    def called(self, name):
        return [(args, kwargs) for call, args, kwargs in self.trt.calls if call == name]


@pytest.fixture
def device(monkeypatch, tmp_path, engine_run):
    return lambda version, **kw: Device(monkeypatch, tmp_path, engine_run, version, **kw)


def flags_set(dev):
    return {args[0].name for args, _ in dev.called("IBuilderConfig.set_flag")}


@pytest.mark.parametrize("version", RELEASES)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_and_run_contract_per_release(device, version, precision):
    dev = device(version)
    assert dev.build(precision) == 0
    engine = dev.run / f"model_{precision}.engine"
    meta = EngineMetadata.load(engine)
    major = int(version.split(".")[0])
    network_flags = dev.called("Builder.create_network")[0][0][0]
    names = {m for m, v in dev.trt.NetworkDefinitionCreationFlag.__members__.items() if network_flags & (1 << int(v))}
    assert names == ({"EXPLICIT_BATCH"} if major == 8 else {"STRONGLY_TYPED"} if major == 10 else set())
    assert meta.strongly_typed == (major >= 10) and meta.precision == precision
    expected_flags = {"fp32": set(), "fp16": {"FP16"}, "int8": {"FP16", "INT8"}}[precision] if major == 8 else set()
    assert flags_set(dev) == expected_flags
    assert not dev.called("IBuilderConfig.int8_calibrator=")  # Q/DQ: no calibrator on any release
    assert dev.trt.built[-1]["precision"] == precision
    with open_backend(engine) as model:
        model.input[:] = np.random.default_rng(0).standard_normal(model.input.shape)
        expected = model.input.mean() * np.arange(1, len(meta.classes) + 1)
        np.testing.assert_allclose(model.infer(), expected, rtol=1e-5)
        bound = {args[0]: args[1] for args, _ in dev.called("IExecutionContext.set_tensor_address")}
        assert set(bound) == {tensor[0] for tensor in dev.trt.built[-1]["tensors"]}  # every I/O tensor, once
        assert all(dev.cudart.allocations[address][1] == "device" for address in bound.values())
    assert dev.cudart.outstanding() == []  # every buffer and the stream freed at close


@pytest.mark.parametrize("version", RELEASES)
def test_fault_fp32_engines_are_built_without_tf32(device, version):
    """TF32 is on by default on Ampere/Orin; an FP32 engine compared with ONNX Runtime at 1e-3
    must compute in FP32."""
    dev = device(version)
    assert dev.build("fp32") == 0
    assert dev.trt.built[-1]["tf32"] is False
    assert dev.build("fp16") == 0  # reduced precision builds keep TensorRT's default
    assert dev.trt.built[-1]["tf32"] is True


@pytest.mark.parametrize("version", RELEASES)
def test_fault_timing_cache_from_another_device_is_replaced(device, version, caplog):
    dev = device(version, gpu="Orin")
    (dev.run / "timing.cache").write_bytes(json.dumps({"device": "Xavier", "entries": 7}).encode())
    assert dev.build("fp16") == 0
    assert (dev.run / "model_fp16.engine.json").is_file()
    assert json.loads((dev.run / "timing.cache").read_bytes())["device"] == "Orin"
    assert "timing cache" in caplog.text and "another device or TensorRT version" in caplog.text


@pytest.mark.parametrize("version", ["8.5.2.2", "8.6.1.6", "10.3.0.30"])
def test_fault_calibration_cache_header_follows_the_running_tensorrt(device, version, caplog):
    """The cache was written for 8.5.2 on the workstation; TensorRT skips a cache whose header
    names another version and then asks for images that the device does not have."""
    dev = device(version)
    assert dev.build("int8", int8_mode="calibration_cache") == 0
    assert dev.called("IBuilderConfig.int8_calibrator=")
    assert not [line for line in dev.trt.log if "Calibration failure" in line]


def test_fault_calibration_cache_that_is_not_one_names_the_real_reason(device):
    dev = device("10.3.0.30")
    (dev.run / "calibration.cache").write_text("not a calibration cache\n")
    with pytest.raises(ModelError, match=r"calibration.cache: not a TensorRT entropy calibration cache.*"
                                         r"scrapsort calibrate"):
        from jetson.build import build
        from edge.config import load_config

        build(load_config(dev.config(int8_mode="calibration_cache")), "int8")


def test_calibration_cache_is_refused_by_tensorrt_11(device, caplog):
    dev = device("11.1.0.8")
    assert dev.build("int8", int8_mode="calibration_cache") == 78
    assert not dev.trt.built
    assert "set engine.int8_mode: qdq, then make engine PRECISION=int8" in caplog.text


@pytest.mark.parametrize("version", RELEASES)
def test_unparsable_onnx_is_refused_with_the_next_step(device, version, caplog):
    dev = device(version)
    (dev.run / "model.onnx").write_bytes(b"\x08\x07truncated")
    assert dev.build("fp32") == 66
    assert "cannot parse it" in caplog.text and "scrapsort export" in caplog.text
    assert not (dev.run / "model_fp32.engine").exists()


@pytest.mark.parametrize("version", ["8.6.1.6", "10.3.0.30"])
def test_fault_dla_engine_runs_on_the_core_it_was_built_for(device, version):
    dev = device(version, dla_cores=2)
    assert dev.build("fp16", dla_core=1) == 0
    assert dev.trt.built[-1]["dla_core"] == 1
    with open_backend(dev.run / "model_fp16.engine") as model:
        assert model.engine._dla_core_used == 1


def test_dla_engine_on_a_device_without_that_core_is_refused(device, monkeypatch, tmp_path):
    dev = device("10.3.0.30", dla_cores=2)
    assert dev.build("fp16", dla_core=1) == 0
    dev.trt.device["dla_cores"] = 1
    with pytest.raises(ModelError, match=r"built for DLA core 1, this device has 1 DLA core.*make engine"):
        open_backend(dev.run / "model_fp16.engine")


def test_fault_engine_tensors_that_disagree_with_the_sidecar_are_refused(device):
    """Buffers come from the engine's own tensor shapes; a sidecar that says otherwise (here one
    class fewer) is refused before any copy, instead of the engine writing past the buffer."""
    dev = device("10.3.0.30")
    assert dev.build("fp32") == 0
    engine = dev.run / "model_fp32.engine"
    meta = json.loads((dev.run / "model_fp32.engine.json").read_text())
    meta["classes"] = meta["classes"][:-1]
    (dev.run / "model_fp32.engine.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"output .* has 6 classes, the metadata lists 5.*make engine"):
        open_backend(engine)
    assert dev.cudart.outstanding() == []


def test_fault_input_shape_outside_the_engine_profile_is_refused(device, monkeypatch):
    dev = device("10.3.0.30")
    assert dev.build("fp32") == 0
    dev.trt.built.clear()
    engine_file = dev.run / "model_fp32.engine"
    blob = json.loads(engine_file.read_bytes())
    name, shape = blob["tensors"][0][:2]
    blob["tensors"][0][1] = [-1] + shape[1:]
    blob["profiles"] = [{name: [[2] + shape[1:], [2] + shape[1:], [4] + shape[1:]]}]  # no batch 1
    engine_file.write_bytes(json.dumps(blob).encode())
    with pytest.raises(ModelError, match=r"rejects input shape \(1, 3, 64, 64\).*make engine"):
        open_backend(engine_file)
    assert dev.cudart.outstanding() == []


def test_fault_strong_typing_is_decided_by_the_major_version(device):
    """A later 11.x may drop the deprecated STRONGLY_TYPED flag; FP16 must still come from the
    FP16 ONNX, never from BuilderFlag.FP16 (gone since 11.0)."""
    dev = device("11.1.0.8", remove=["NetworkDefinitionCreationFlag.STRONGLY_TYPED"])
    assert dev.build("fp16") == 0
    assert EngineMetadata.load(dev.run / "model_fp16.engine").strongly_typed


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_fault_cuda_calls_use_objects_and_error_values(device):
    """cuda-bindings 13 deprecates int(stream) and its errors are no IntEnum: the stream object
    goes to TensorRT as its samples pass it, and errors are read through .value."""
    dev = device("10.3.0.30")
    assert dev.build("fp32") == 0
    with open_backend(dev.run / "model_fp32.engine") as model:
        model.infer()
    args, kwargs = dev.called("IExecutionContext.execute_async_v3")[0]
    assert isinstance((args or tuple(kwargs.values()))[0], cudaStream_t)


@pytest.mark.parametrize("fail", [{"cudaMalloc": 2}, {"cudaMallocHost": 2}, {"cudaStreamCreate": 1}])
def test_fault_gpu_memory_is_freed_when_setup_fails(device, fail):
    dev = device("10.3.0.30")
    assert dev.build("fp32") == 0
    dev.cudart.fail = fail
    with pytest.raises(ModelError, match="CUDA error cudaErrorMemoryAllocation"):
        open_backend(dev.run / "model_fp32.engine")
    assert dev.cudart.outstanding() == []
