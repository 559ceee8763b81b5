"""Engine metadata, mismatch refusal and the no-TensorRT path run here for real; building and
running engines needs TensorRT and a GPU (marked `tensorrt`, skipped elsewhere with the reason)."""
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.vision.backends import open_backend
from edge.cli import main
from edge.errors import ModelError
from jetson.build import onnx_for
from jetson.metadata import EngineMetadata, Runtime, check_match

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed on this machine (no GPU)")

META = EngineMetadata(
    tensorrt="10.3.0.30", gpu="Orin", compute_capability="8.7", precision="int8",
    onnx_path="runs/default/model_int8.onnx", onnx_sha256="a" * 64, input_shape=[1, 3, 224, 224],
    output_shape=[1, 6], classes=["a", "b"], preprocess="{}", built_at="2026-11-25T00:00:00",
    strongly_typed=True)
HERE = Runtime(tensorrt="10.3.0.30", gpu="Orin", compute_capability="8.7")


def test_matching_engine_passes_and_build_number_is_ignored():
    check_match(META, HERE, Path("e.engine"), onnx_sha256="a" * 64)
    check_match(META, replace(HERE, tensorrt="10.3.0.26"), Path("e.engine"))


@pytest.mark.parametrize("runtime, onnx_sha, expected", [
    (Runtime("8.5.2.2", "Xavier", "7.2"), None, r"built with TensorRT 10.3.0.30 on Orin, this is TensorRT 8.5.2.2 on Xavier"),
    (Runtime("10.3.0.30", "NVIDIA H100", "9.0"), None, r"built for Orin \(sm 8.7\), this GPU is NVIDIA H100 \(sm 9.0\)"),
    (HERE, "b" * 64, r"stale, built from a different ONNX"),
])
def test_mismatch_is_refused_with_rebuild_command(runtime, onnx_sha, expected):
    with pytest.raises(ModelError, match=expected) as err:
        check_match(META, runtime, Path("e.engine"), onnx_sha256=onnx_sha)
    assert "make engine PRECISION=int8" in str(err.value)


def test_sidecar_roundtrip_and_missing_sidecar(tmp_path):
    engine = tmp_path / "model_int8.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(ModelError, match="no metadata sidecar"):
        open_backend(engine)  # refused before TensorRT is even imported
    META.save(engine)
    assert EngineMetadata.load(engine) == META
    (tmp_path / "model_int8.engine.json").write_text("{broken")
    with pytest.raises(ModelError, match="unreadable engine metadata"):
        EngineMetadata.load(engine)


def test_onnx_choice_per_tensorrt_generation(tmp_path):
    assert onnx_for("fp16", True, "qdq", tmp_path).name == "model_fp16.onnx"     # 10.x / 11.x
    assert onnx_for("fp16", False, "qdq", tmp_path).name == "model.onnx"         # 8.x + FP16 flag
    assert onnx_for("int8", True, "qdq", tmp_path).name == "model_int8.onnx"
    assert onnx_for("int8", False, "calibration_cache", tmp_path).name == "model.onnx"


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is missing")
def test_build_without_tensorrt_says_so(caplog):
    assert main(["build", "--precision", "fp16"]) == 69
    assert "TensorRT is not installed" in caplog.text and "make engine" in caplog.text


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_onnx_runtime(trained_run, tmp_path, precision):
    import shutil

    from tests.conftest import write_config

    config, run = trained_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    path = write_config(tmp_path / "c.yaml", run.parent / "data", out, calibration={"images": 12, "methods": ["max"]})
    if precision != "fp32":
        assert main(["calibrate", "--config", str(path), "-q"]) == 0
    assert main(["build", "--config", str(path), "--precision", precision]) == 0
    engine = out / f"model_{precision}.engine"
    with open_backend(engine) as trt_model, open_backend(out / "model.onnx") as reference:
        trt_model.input[:] = reference.input[:] = np.random.default_rng(0).standard_normal(reference.input.shape)
        tolerance = {"fp32": 1e-3, "fp16": 5e-2, "int8": 1.0}[precision]
        assert np.abs(trt_model.infer() - reference.infer()).max() < tolerance


# -- the board: L4T -> JetPack, module id, power modes (recorded file contents) ----------------
ORIN_NANO_SUPER = """< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=25W >\n< POWER_MODEL ID=2 NAME=MAXN_SUPER >
< POWER_MODEL ID=3 NAME=7W >\n< PM_CONFIG DEFAULT=2 >\n"""
AGX_ORIN = """< POWER_MODEL ID=0 NAME=MAXN >\n< POWER_MODEL ID=1 NAME=MODE_15W >\n< POWER_MODEL ID=2 NAME=MODE_30W >
< POWER_MODEL ID=3 NAME=MODE_50W >\n"""


@pytest.mark.parametrize("line, release, described", [
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
     "35.4.1", "L4T 35.4.1 = JetPack 5.1.2 (TensorRT 8.5.2)"),
    ("# R35 (release), REVISION: 1.0, GCID: 31250864, BOARD: t186ref", "35.1.0", "upgrade to JetPack 5.1 or later"),
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic", "36.4.3", "JetPack 6.2 (TensorRT 10.3.0)"),
    ("# R36 (release), REVISION: 4, GCID: 37537400", "36.4.0", "JetPack 6.1"),
    ("# R39 (release), REVISION: 0.1, GCID: 1", "39.0.1", "JetPack unknown to this table"),
])
def test_fault_doctor_names_the_l4t_revision_and_jetpack(tmp_path, monkeypatch, line, release, described):
    from jetson import board
    from jetson.doctor import checks

    (tmp_path / "nv_tegra_release").write_text(line + "\n")
    monkeypatch.setattr(board, "RELEASE_FILE", tmp_path / "nv_tegra_release")
    detail = dict((what, detail) for what, _, detail in checks())["Jetson L4T"]
    assert detail.startswith(f"L4T {release}") and described in detail


@pytest.mark.parametrize("compatible, module", [
    (b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0", "p3767-0005/tegra234"),  # Orin Nano 8GB
    (b"nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0", "p3767-0000/tegra234"),  # Orin NX 16GB
    (b"nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0", "p3701-0005/tegra234"),  # AGX Orin 64GB
])
def test_module_id_tells_orin_modules_apart(tmp_path, compatible, module):
    from jetson.board import module_id

    (tmp_path / "compatible").write_bytes(compatible)
    assert module_id(tmp_path / "compatible") == module
    assert module_id(tmp_path / "missing") == ""


def test_fault_engine_moved_between_orin_modules_is_refused():
    built_on_nx = replace(META, module="p3767-0000/tegra234")
    check_match(built_on_nx, replace(HERE, module="p3767-0000/tegra234"), Path("e.engine"))
    with pytest.raises(ModelError, match=r"built on module p3767-0000/tegra234, this is p3767-0005/tegra234.*"
                                         r"make engine PRECISION=int8"):
        check_match(built_on_nx, replace(HERE, module="p3767-0005/tegra234"), Path("e.engine"))


@pytest.mark.parametrize("conf, mode", [(ORIN_NANO_SUPER, "2"), (AGX_ORIN, "0"),
                                        ("< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=7W >\n", "0")])
def test_fault_doctor_apply_sets_the_fastest_mode_of_this_module(tmp_path, monkeypatch, conf, mode):
    import subprocess

    from jetson import board, doctor

    (tmp_path / "nvpmodel.conf").write_text(conf)
    monkeypatch.setattr(board, "NVPMODEL_CONF", tmp_path / "nvpmodel.conf")
    ran = []
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(doctor.subprocess, "run", lambda args, **kw: ran.append(args) or
                        subprocess.CompletedProcess(args, 0, "", ""))
    doctor.apply_performance()
    assert ran == [["nvpmodel", "-m", mode], ["jetson_clocks"]]


def _gpu_reason():
    import jetson.cuda

    if jetson.cuda.cudart is None:
        return "cuda-python is not installed"
    try:
        jetson.cuda.gpu()
    except Exception as exc:  # no driver, no device
        return f"no usable NVIDIA GPU ({exc})"
    return None


@pytest.mark.gpu
def test_cuda_buffers_round_trip_and_free_on_a_real_gpu():
    """The real cuda-python path: pinned host + device buffers, one stream, async copies both
    ways, and every byte of device memory given back (also when a buffer is abandoned halfway)."""
    reason = _gpu_reason()
    if reason:
        pytest.skip(reason)
    from jetson import cuda

    def free_bytes():
        return cuda.check(cuda.cudart.cudaMemGetInfo())[0]

    before = free_bytes()
    data = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with cuda.Stream() as stream, cuda.HostDeviceBuffer(data.shape) as there, \
            cuda.HostDeviceBuffer(data.shape) as back:
        there.host[:] = data
        there.to_device(stream)
        cuda.check(cuda.cudart.cudaMemcpyAsync(back.device, there.device, there.nbytes,
                                               cuda.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle))
        back.to_host(stream)
        stream.synchronize()
        assert np.array_equal(back.host, data)
    assert abs(free_bytes() - before) < (2 << 20)  # the allocator's granularity, not our buffers
