"""ONNX Runtime execution providers: the configured order, options, fallback and what really runs.

This machine's onnxruntime has the CPU provider only; the GPU cases stub the list of providers
ONNX Runtime reports and record what the session is asked for, while a real CPU session runs."""
import logging

import numpy as np
import onnxruntime
import pytest

from edge.config import load_config
from edge.errors import ConfigError
from edge.service.bench import onnx_providers
from edge.vision.backends.onnxruntime import OnnxRuntimeBackend, choose_providers, tensorrt_ep_options
from tests.conftest import write_config

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


class GpuOnnxRuntime:
    """onnxruntime as a Jetson build reports it; `loads` are the providers that register."""

    def __init__(self, monkeypatch, loads=(TRT, CUDA, CPU)):
        self.asked, real = [], onnxruntime.InferenceSession
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TRT, CUDA, CPU])
        recorder = self

        class Session(real):
            def __init__(self, path, options=None, providers=None, **kwargs):
                recorder.asked.append(providers)
                super().__init__(path, options, providers=[CPU], **kwargs)
                self._registered = [p[0] if isinstance(p, tuple) else p for p in providers if
                                    (p[0] if isinstance(p, tuple) else p) in loads]

            def get_providers(self):
                return self._registered

        monkeypatch.setattr(onnxruntime, "InferenceSession", Session)


def test_providers_this_onnxruntime_lacks_are_skipped_with_the_package_to_install(caplog):
    chosen = choose_providers([(TRT, {"trt_fp16_enable": True}), CUDA, CPU], available=[CPU])
    assert chosen == [(CPU, {})]
    assert "TensorrtExecutionProvider is not in this onnxruntime" in caplog.text
    assert "onnxruntime-gpu" in caplog.text
    assert choose_providers([CUDA], available=[CUDA, CPU]) == [(CUDA, {}), (CPU, {})]  # CPU takes the rest


def test_tensorrt_ep_runs_first_with_engine_cache_and_the_model_precision(trained_run, monkeypatch):
    _, run = trained_run
    ort = GpuOnnxRuntime(monkeypatch)
    with OnnxRuntimeBackend(run / "model.onnx", providers=[(TRT, {"trt_max_workspace_size": 1 << 30}), CUDA, CPU]) \
            as model:
        assert model.runs_on == TRT and model.providers == [TRT, CUDA, CPU]
        model.input[:] = 0.5
        assert np.isfinite(model.infer()).all()
    name, options = ort.asked[-1][0]
    assert name == TRT and ort.asked[-1][1:] == [(CUDA, {}), (CPU, {})]
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(run / "ort_trt_cache")
    assert options["trt_max_workspace_size"] == 1 << 30                      # the config's own options kept
    assert not options["trt_fp16_enable"] and not options["trt_int8_enable"]  # an FP32 model stays FP32


def test_precision_options_follow_the_model(tmp_path):
    assert tensorrt_ep_options(tmp_path / "m.onnx", "fp16", {})["trt_fp16_enable"] is True
    int8 = tensorrt_ep_options(tmp_path / "m.onnx", "int8", {"trt_fp16_enable": False})
    assert int8["trt_int8_enable"] is True and int8["trt_fp16_enable"] is False   # config wins


def test_a_provider_that_fails_to_load_is_reported_and_the_next_runs(trained_run, monkeypatch, caplog):
    _, run = trained_run
    GpuOnnxRuntime(monkeypatch, loads=(CUDA, CPU))  # e.g. TensorRT's libraries missing
    with caplog.at_level(logging.INFO), OnnxRuntimeBackend(run / "model.onnx", providers=[TRT, CUDA, CPU]) as model:
        assert model.runs_on == CUDA
    assert "TensorrtExecutionProvider did not load" in caplog.text and "running on CUDAExecutionProvider" in caplog.text


def test_bench_measures_each_available_provider_as_its_own_row():
    assert onnx_providers([CPU, "AzureExecutionProvider"]) == [CPU]
    assert onnx_providers([CPU, CUDA, TRT]) == [TRT, CUDA, CPU]


def test_config_takes_names_or_names_with_options_and_refuses_unknown_ones(tmp_path):
    path = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "run", runtime={"providers": [
        {"name": TRT, "options": {"trt_engine_cache_path": "/var/lib/scrapsort/trt"}}, CUDA, CPU]})
    providers = load_config(path).runtime.providers
    assert [p.name for p in providers] == [TRT, CUDA, CPU]
    assert providers[0].options == {"trt_engine_cache_path": "/var/lib/scrapsort/trt"}
    path = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "run", runtime={"providers": ["CUDAProvider"]})
    with pytest.raises(ConfigError, match=r"runtime.providers.*TensorrtExecutionProvider"):
        load_config(path)
