"""Bias correction for INT8 weight rounding (calibration/bias_correction.py), on a small graph
whose layers are linear, where the correction is exact in the mean."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.bias_correction import bias_corrected, input_means, rounding_error, weight_levels
from calibration.dataset import CalibrationReader


def linear_model(path, rng):
    """1x1 conv (no bias) -> 3x3 depthwise conv (bias, no padding) -> mean over the image -> Gemm."""
    weights = {"pointwise": rng.normal(0, 0.5, (8, 3, 1, 1)), "depthwise": rng.normal(0, 0.5, (8, 1, 3, 3)),
               "depthwise_bias": rng.normal(0, 0.1, 8), "fc": rng.normal(0, 0.5, (4, 8)), "fc_bias": np.zeros(4)}
    nodes = [helper.make_node("Conv", ["x", "pointwise"], ["a"], name="pointwise"),
             helper.make_node("Conv", ["a", "depthwise", "depthwise_bias"], ["b"], name="depthwise", group=8,
                              kernel_shape=[3, 3]),
             helper.make_node("GlobalAveragePool", ["b"], ["c"]),
             helper.make_node("Flatten", ["c"], ["d"]),
             helper.make_node("Gemm", ["d", "fc", "fc_bias"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def with_rounded_weights(path, out, levels):
    """The model as INT8 runs it: every conv and Gemm weight on its per-channel grid."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name in ("pointwise", "depthwise", "fc"):
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((w + rounding_error(w, levels)).astype(np.float32), init.name))
    onnx.save(model, str(out))
    return out


def mean_output(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.mean([session.run(None, {"x": x})[0][0] for x in inputs], axis=0)


@pytest.mark.parametrize("form", ["tensorrt", "cpu"])
def test_the_corrected_model_rounded_to_int8_keeps_the_fp32_mean_output(tmp_path, form):
    rng = np.random.default_rng(0)
    source = linear_model(tmp_path / "fp32.onnx", rng)
    # Not centred on zero; each image even across its pixels, so that every window of the 3x3
    # convolution sees the image's mean (the correction does not model image borders).
    inputs = [np.broadcast_to(rng.random((1, 3, 1, 1)) * 2 + 1, (1, 3, 6, 6)).astype(np.float32) for _ in range(16)]
    means = input_means(source, CalibrationReader("x", inputs))
    corrected = bias_corrected(source, tmp_path / "corrected.onnx", means, form)

    levels = weight_levels(form)
    fp32 = mean_output(source, inputs)
    plain = mean_output(with_rounded_weights(source, tmp_path / "plain_int8.onnx", levels), inputs)
    fixed = mean_output(with_rounded_weights(corrected, tmp_path / "corrected_int8.onnx", levels), inputs)
    assert np.abs(plain - fp32).max() > 1e-3                      # rounding alone moves the output
    assert np.abs(fixed - fp32).max() < np.abs(plain - fp32).max() / 100
    assert np.abs(fixed - fp32).max() < 1e-5


def test_a_layer_without_a_bias_gets_one_and_the_rest_of_the_graph_is_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    source = linear_model(tmp_path / "fp32.onnx", rng)
    inputs = [(rng.random((1, 3, 6, 6)) + 1).astype(np.float32) for _ in range(4)]
    means = input_means(source, CalibrationReader("x", inputs))
    corrected = onnx.load(str(bias_corrected(source, tmp_path / "c.onnx", means)))
    original = onnx.load(str(source))
    pointwise = next(n for n in corrected.graph.node if n.name == "pointwise")
    assert len(pointwise.input) == 3  # a bias was added where the exporter wrote none
    assert [n.op_type for n in corrected.graph.node] == [n.op_type for n in original.graph.node]
    weights = {i.name: numpy_helper.to_array(i) for i in corrected.graph.initializer}
    for init in original.graph.initializer:
        if "bias" not in init.name:
            assert np.array_equal(weights[init.name], numpy_helper.to_array(init))  # weights stay FP32 as they were
