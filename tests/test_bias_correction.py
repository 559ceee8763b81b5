"""Bias correction for INT8 (calibration/bias_correction.py): for the weights' rounding on a small
graph whose layers are linear, where it is exact in the mean; then, measured layer by layer, on
a quantized block with clipped activations and a skip connection."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.bias_correction import (bias_corrected, layer_means, rounding_error, sequentially_corrected,
                                        weight_levels)
from calibration.dataset import CalibrationReader
from calibration.qdq import quantize_int8
from tests.conftest import layer_output_means


def saved(path, nodes, weights, side):
    """A graph from input x (1, 3, side, side) to logits y (1, 4), its weights in FP32, saved to `path`."""
    graph = helper.make_graph(nodes, path.stem,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


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
    return saved(path, nodes, weights, side=6)


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
    means = layer_means(source, CalibrationReader("x", inputs))
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
    means = layer_means(source, CalibrationReader("x", inputs))
    corrected = onnx.load(str(bias_corrected(source, tmp_path / "c.onnx", means)))
    original = onnx.load(str(source))
    pointwise = next(n for n in corrected.graph.node if n.name == "pointwise")
    assert len(pointwise.input) == 3  # a bias was added where the exporter wrote none
    assert [n.op_type for n in corrected.graph.node] == [n.op_type for n in original.graph.node]
    weights = {i.name: numpy_helper.to_array(i) for i in corrected.graph.initializer}
    for init in original.graph.initializer:
        if "bias" not in init.name:
            assert np.array_equal(weights[init.name], numpy_helper.to_array(init))  # weights stay FP32 as they were


def block_model(path, rng):
    """An inverted-residual block as EfficientNet-Lite writes it: 1x1 conv -> ReLU6 -> 3x3
    depthwise -> ReLU6 -> 1x1 conv (no bias) + the first conv's output -> pool -> Gemm."""
    weights = {"expand": rng.normal(0, 0.7, (8, 3, 1, 1)), "expand_bias": rng.normal(0.3, 0.2, 8),
               "depthwise": rng.normal(0, 0.5, (8, 1, 3, 3)), "depthwise_bias": rng.normal(0, 0.1, 8),
               "project": rng.normal(0, 0.4, (8, 8, 1, 1)), "fc": rng.normal(0, 0.5, (4, 8)), "fc_bias": np.zeros(4),
               "zero": np.zeros(()), "six": np.full((), 6.0)}
    nodes = [helper.make_node("Conv", ["x", "expand", "expand_bias"], ["a"], name="expand"),
             helper.make_node("Clip", ["a", "zero", "six"], ["a6"]),
             helper.make_node("Conv", ["a6", "depthwise", "depthwise_bias"], ["b"], name="depthwise", group=8,
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["b", "zero", "six"], ["b6"]),
             helper.make_node("Conv", ["b6", "project"], ["c"], name="project"),
             helper.make_node("Add", ["c", "a"], ["d"]),  # the skip crosses two corrected layers
             helper.make_node("GlobalAveragePool", ["d"], ["e"]),
             helper.make_node("Flatten", ["e"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fc_bias"], ["y"], name="fc", transB=1)]
    return saved(path, nodes, weights, side=8)


def bias_step(graph, name):
    """The value of one int32 bias level of a layer (its DequantizeLinear's scale), per channel;
    0 where the bias is a float constant."""
    node = next(n for n in graph.node if n.name == name)
    dequantize = next((n for n in graph.node if node.input[2] in n.output), None)
    return 0.0 if dequantize is None else \
        numpy_helper.to_array(next(i for i in graph.initializer if i.name == dequantize.input[1]))


@pytest.mark.parametrize("form", ["tensorrt", "cpu"])
def test_each_quantized_layer_is_given_the_fp32_mean_output_with_the_layers_before_it_corrected(tmp_path, form):
    rng = np.random.default_rng(2)
    source = block_model(tmp_path / "fp32.onnx", rng)
    reader = CalibrationReader("x", [(rng.random((1, 3, 8, 8)) * 3).astype(np.float32) for _ in range(24)])
    quantized = tmp_path / "int8.onnx"
    # percentile ranges clip the largest activations: a shift the weights' rounding does not explain
    quantize_int8(source, quantized, reader, "percentile", tmp_path / "ranges.json", percentile=99.0, form=form)
    means = layer_means(source, reader)
    corrected = sequentially_corrected(quantized, tmp_path / "corrected.onnx", means, reader)

    before, after = (layer_output_means(m, means.outputs, reader) for m in (quantized, corrected))
    assert set(after) == set(means.outputs) == {"expand", "depthwise", "project", "fc"}
    worst_before = max(np.abs(before[n] - means.outputs[n]).max() for n in means.outputs)
    assert worst_before > 0.01
    graph, original = onnx.load(str(corrected)).graph, onnx.load(str(quantized)).graph
    for name, fp32 in means.outputs.items():
        # exact in float; the x86 form's int32 bias rounds the correction to half a step of its grid
        tolerance = 1e-5 if form == "tensorrt" else bias_step(graph, name) / 2 + 1e-6
        assert np.all(np.abs(after[name] - fp32) < tolerance), name
    assert [n.op_type for n in graph.node] == [n.op_type for n in original.node]  # biases change, nothing else
    assert len(next(n for n in graph.node if n.name == "project").input) == 3  # it had none: it has one now
