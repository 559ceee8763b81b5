"""calibrate: calibration set, FP16 + INT8 Q/DQ ONNX, TensorRT cache, precision comparison."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from calibration.dataset import load_set, select_items
from calibration.trt_cache import read_cache, write_cache
from jetson.calibrator import version_code
from edge.vision.backends import onnxruntime as ort_backend, open_backend
from edge.vision.backends.onnxruntime import int8_kernels_saturate
from edge.cli import main
from edge.errors import DataError
from tests.conftest import calibrated_copy, layer_output_means
from edge.vision.dataset import Manifest


@pytest.fixture(scope="module")
def calibrated(trained_run, tmp_path_factory):
    return calibrated_copy(trained_run, tmp_path_factory.mktemp("calib"), images=12, methods=["max", "entropy"],
                           max_drop=-1.0, max_float_layers=2, sensitivity_images=6)


def test_calibration_set_is_stratified_train_only(trained_run):
    _, run = trained_run
    manifest = Manifest.load(run / "manifest.json")
    items = select_items(manifest, 12, seed=5)
    assert {i.split for i in items} == {"train"}
    assert {i.label for i in items} == set(manifest.classes)  # every class represented
    assert items == select_items(manifest, 12, seed=5)


def test_int8_model_is_qdq_symmetric_and_runs(calibrated):
    _, run = calibrated
    graph = onnx.load(str(run / "model_int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = [i for i in graph.initializer if "zero_point" in i.name]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric
    assert all(onnx.numpy_helper.to_array(z).dtype == np.int8 for z in zero_points)
    with open_backend(run / "model_int8.onnx") as int8, open_backend(run / "model.onnx") as fp32:
        assert int8.info.precision == "int8" and int8.info.classes == fp32.info.classes
        fp32.input[:] = int8.input[:] = np.random.default_rng(0).standard_normal(int8.input.shape)
        assert np.abs(int8.infer() - fp32.infer()).max() < 2.0


def test_cpu_int8_form_is_unsigned_with_integer_weights_and_same_float_layers(calibrated):
    _, run = calibrated
    report = json.loads((run / "calibration_report.json").read_text())
    graph = onnx.load(str(run / "model_int8_cpu.onnx")).graph
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    activation_zps = [initializers[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zps and all(z.dtype == np.uint8 for z in activation_zps)
    weights = [initializers[n.input[0]] for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in initializers and initializers[n.input[0]].ndim == 4]
    assert weights and all(w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 64 for w in weights)  # 7-bit
    produced_by_dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"])
    for node in graph.node:
        if node.name in chosen["float_layers"]:
            assert node.input[1] not in produced_by_dq, node.name
    assert report["int8_cpu"]["float_layers"] == chosen["float_layers"]
    with open_backend(run / "model_int8_cpu.onnx") as cpu, open_backend(run / "model.onnx") as fp32:
        assert cpu.info.precision == "int8-cpu" and not cpu.unfused_int8
        fp32.input[:] = cpu.input[:] = np.random.default_rng(0).standard_normal(cpu.input.shape)
        assert np.abs(cpu.infer() - fp32.infer()).max() < 2.0


def test_report_lists_every_variant_and_keeps_the_best(calibrated):
    _, run = calibrated
    report = json.loads((run / "calibration_report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    ranking = report["sensitivity_ranking"]
    floats = min(2, len(ranking))  # max_drop < 0 forces the search through max_float_layers
    post_training = names[:4 + 4 * floats]
    # the fine-tuned model keeps the float layers of the best post-training variant, judged before
    # the images set aside for fine-tuning left the judging (so the report's scores may differ)
    kept_floats = len(next(v for v in report["variants"] if v["name"] == report["qat_float_layers_from"])
                      ["float_layers"])
    qat = [[f"qat-int8-{m}"] + ([f"qat-int8-{m}-float-{kept_floats}"] if kept_floats else []) for m in ("max", "entropy")]
    every_layer = [f"{model}int8-{m}" for m in ("max", "entropy") for model in ("", "bc-")]  # as trained, corrected
    with_floats = [f"{model}int8-{m}-float-{k}" for m in ("max", "entropy") for model in ("", "bc-")
                   for k in range(1, floats + 1)]
    assert post_training == every_layer + with_floats
    assert names[len(post_training):] == qat[0] + qat[1]  # none met the bound: the fine-tuned model was tried
    for variant in report["variants"]:
        corrected = variant["name"].startswith("bc-")
        assert variant["source"].endswith("model_bias_corrected.onnx") == corrected
    for variant in report["variants"]:
        count = int(variant["name"].rsplit("-", 1)[1]) if "float" in variant["name"] else 0
        assert variant["float_layers"] == ranking[:count]  # the fine-tuned model's too: the same layers
    best = max(report["variants"], key=lambda v: (v["agreement"], v["accuracy"]))  # closest to FP32 first
    assert report["chosen"] == best["name"]
    assert all(set(v["bins"]) == {"other_bin", "to_reject", "from_reject"} for v in report["variants"])
    assert (run / "model_int8.onnx").read_bytes() == open(best["path"], "rb").read()
    x86 = report["int8_cpu"]  # from the chosen model: bias-corrected for its own 7-bit weights where that was chosen
    assert x86["source"].endswith("model_bias_corrected_cpu.onnx") == best["name"].startswith("bc-")


def test_bias_corrected_variants_give_each_layer_the_fp32_mean_output_over_the_calibration_images(calibrated):
    """Step 2 of bias correction runs on every variant of the corrected model, those with layers
    left in float too, and on no other."""
    from calibration.bias_correction import layer_means
    from calibration.dataset import CalibrationReader, preprocess_files
    from train.onnx_meta import input_name

    _, run = calibrated
    report = json.loads((run / "calibration_report.json").read_text())
    with open_backend(run / "model.onnx") as fp32:
        info = fp32.info
    files = load_set(run / "calibration_set.json", info)
    reader = CalibrationReader(input_name(run / "model.onnx"), preprocess_files(files, info.preprocess, False))
    reference = layer_means(run / "calibration" / "model_prepared.onnx", reader).outputs
    post_training = [v for v in report["variants"] if not v["name"].startswith("qat-")]
    for variant in post_training:
        means = layer_output_means(Path(variant["path"]), reference, reader)
        off = max(float(np.abs(means[name] - reference[name]).max()) for name in reference)
        if variant["name"].startswith("bc-"):
            assert off < 1e-4, variant["name"]
        else:
            assert off > 1e-3, variant["name"]


def test_sensitivity_ranks_layers_that_change_no_answer_by_how_far_they_move_the_logits(calibrated):
    """On a few images most layers change no answer when quantized alone; they are still ranked,
    by the distance their quantization moves the logits, not by their place in the graph."""
    from calibration.qdq import quantizable_nodes

    _, run = calibrated
    report = json.loads((run / "calibration_report.json").read_text())
    ranking, scores = report["sensitivity_ranking"], report["sensitivity"]
    assert set(scores) == set(quantizable_nodes(run / "calibration" / "model_prepared.onnx"))
    assert ranking == sorted([n for n in scores if scores[n]["distance"] > 0], key=lambda n: -scores[n]["distance"])
    unchanged = [n for n in ranking if scores[n]["agreement"] == 1.0]
    assert len(unchanged) >= 2  # ranked although they change no answer
    assert scores[unchanged[0]]["distance"] > scores[unchanged[-1]]["distance"]


def test_variants_are_judged_on_every_non_test_image_neither_calibration_nor_fine_tuning_learned_from(calibrated):
    """Half of each class's selection images is set aside for quantization-aware fine-tuning
    (calibration.qat.learn_share); once it has learned from them, every variant, post-training
    ones too, is judged on the rest."""
    from collections import Counter
    from dataclasses import replace

    from calibration.calibrate import selection_set
    from train.evaluate import predict_split

    _, run = calibrated
    report = json.loads((run / "calibration_report.json").read_text())
    manifest = Manifest.load(run / "manifest.json")
    used = json.loads((run / "calibration_set.json").read_text())["files"]
    pool = {str(manifest.absolute(i)) for i in manifest.split("train") + manifest.split("val")}
    assert len(used) == report["calibration_images"] > 0 and set(used) <= pool
    aside = set(report["fine_tuning_learned_from"])
    selection = selection_set(manifest, used).items
    assert aside <= pool - set(used)
    label = {str(manifest.absolute(i)): i.label for i in selection}
    assert Counter(label[f] for f in aside) == {c: round(n / 2) for c, n in Counter(label.values()).items()}
    judged = [replace(i, split="val") for i in selection if str(manifest.absolute(i)) not in aside]
    assert report["selection_images"] == len(judged) > 0
    assert not {str(manifest.absolute(i)) for i in judged} & {str(manifest.absolute(i)) for i in manifest.split("test")}
    on_judged = manifest.subset(judged)
    reference, labels, _ = predict_split(run / "model.onnx", on_judged, "val", progress=False)
    assert {v["judged_on"] for v in report["variants"] + report["int8_cpu"]["variants"]} == {len(judged)}
    for variant in report["variants"]:
        answers = predict_split(variant["path"], on_judged, "val", progress=False)[0].argmax(1)
        assert variant["agreement"] == pytest.approx(float(np.mean(answers == reference.argmax(1)))), variant["name"]
        assert variant["accuracy"] == pytest.approx(float(np.mean(answers == np.asarray(labels)))), variant["name"]


@pytest.mark.parametrize("when", ["needed", "always"])
def test_where_post_training_int8_is_good_enough_it_is_fine_tuned_only_if_always(trained_run, tmp_path, when):
    """calibration.qat.when: needed fine-tunes only where no post-training variant meets the
    bounds, and then every selection image judges; always fine-tunes regardless."""
    from calibration.calibrate import selection_set

    path, run = calibrated_copy(trained_run, tmp_path, images=12, methods=["max"], min_agreement=0.0, max_drop=1.0,
                                qat={"when": when}, bias_correction=when == "always")
    report = json.loads((run / "calibration_report.json").read_text())
    manifest = Manifest.load(run / "manifest.json")
    used = json.loads((run / "calibration_set.json").read_text())["files"]
    selection = len(selection_set(manifest, used).items)
    if when == "needed":
        assert [v["name"] for v in report["variants"]] == ["int8-max"] and report["qat_model"] is None
        assert report["fine_tuning_learned_from"] == [] and report["selection_images"] == selection
    else:
        assert [v["name"] for v in report["variants"]] == ["int8-max", "bc-int8-max", "qat-int8-max"]
        assert report["qat_model"]
        learned = len(report["fine_tuning_learned_from"])
        assert learned > 0 and report["selection_images"] == selection - learned


def test_no_layer_stays_in_float_where_a_variant_with_every_layer_int8_meets_the_bounds(trained_run, tmp_path,
                                                                                     monkeypatch):
    """A float layer costs latency on the device: the sensitivity scan and the float-layer
    variants run only where no variant with every layer INT8 meets the bounds (here the
    bias-corrected one is made to meet them and the other not)."""
    from calibration import calibrate as module

    judged = module.Judge.scored

    def scored(judge, variant):
        met = variant["name"].startswith("bc-")
        return {**judged(judge, variant), "agreement": 1.0 if met else 0.5,
                "accuracy": judge.fp32_accuracy if met else 0.0}

    monkeypatch.setattr(module.Judge, "scored", scored)
    _, run = calibrated_copy(trained_run, tmp_path, images=12, methods=["max"], max_float_layers=2,
                             qat={"when": "needed"})
    report = json.loads((run / "calibration_report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["int8-max", "bc-int8-max"]
    assert report["sensitivity_ranking"] is None and report["chosen"] == "bc-int8-max"


def test_float_layers_really_stay_float(calibrated):
    _, run = calibrated
    report = json.loads((run / "calibration_report.json").read_text())
    for variant in report["variants"]:
        graph = onnx.load(variant["path"]).graph
        produced_by_dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        for node in graph.node:
            if node.name in variant["float_layers"]:
                assert node.input[1] not in produced_by_dq, (variant["name"], node.name)


def test_fp16_model_keeps_fp32_io(calibrated):
    _, run = calibrated
    model = onnx.load(str(run / "model_fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    with open_backend(run / "model_fp16.onnx") as fp16, open_backend(run / "model.onnx") as fp32:
        fp32.input[:] = fp16.input[:] = np.random.default_rng(1).standard_normal(fp16.input.shape)
        assert np.abs(fp16.infer() - fp32.infer()).max() < 0.05


def test_trt_cache_names_graph_tensors(calibrated):
    _, run = calibrated
    header, scales = read_cache(run / "calibration.cache")
    assert header == f"TRT-{version_code('8.5.2')}-EntropyCalibration2" == "TRT-8502-EntropyCalibration2"
    graph = onnx.load(str(run / "model.onnx")).graph
    tensors = {graph.input[0].name} | {o for n in graph.node for o in n.output}
    assert "input" in scales and set(scales) <= tensors
    assert all(s > 0 for s in scales.values())


def test_trt_cache_roundtrip(tmp_path):
    written = write_cache({"a": (-2.54, 1.0), "b": (0.0, 0.0), "c": (-1.0, 12.7)}, tmp_path / "c", "10.3.0")
    header, scales = read_cache(tmp_path / "c")
    assert written == 2 and header == "TRT-100300-EntropyCalibration2"
    assert scales == pytest.approx({"a": 0.02, "c": 0.1})


def test_mismatched_calibration_set_is_refused(calibrated, tmp_path):
    _, run = calibrated
    with open_backend(run / "model.onnx") as backend:
        info = backend.info
    saved = json.loads((run / "calibration_set.json").read_text())
    saved["preprocess"]["mean"] = [123.675, 116.28, 103.53]
    (tmp_path / "other.json").write_text(json.dumps(saved))
    with pytest.raises(DataError, match="preprocessing .* differs"):
        load_set(tmp_path / "other.json", info)
    saved = json.loads((run / "calibration_set.json").read_text())
    saved["classes"] = saved["classes"][::-1]
    (tmp_path / "classes.json").write_text(json.dumps(saved))
    with pytest.raises(DataError, match="classes"):
        load_set(tmp_path / "classes.json", info)


def test_precision_comparison_table(calibrated):
    config, run = calibrated
    assert main(["evaluate", "--config", str(config), "--precisions", "-q"]) == 0
    result = json.loads((run / "precision_comparison.json").read_text())
    assert list(result["precisions"]) == ["fp32", "fp16", "int8", "int8-cpu"]
    assert result["precisions"]["fp32"]["agreement_with_fp32"] == 1.0
    assert result["precisions"]["fp32"]["max_logit_diff_vs_fp32"] == 0.0
    assert result["precisions"]["fp32"]["bins_vs_fp32"] == {"other_bin": 0, "to_reject": 0, "from_reject": 0}
    table = (run / "precision_comparison.md").read_text()
    assert table.count("\n| ") == 4 and "F1 trash" in table and "| 0 / 0 / 0 |" in table


def test_bin_changes_are_counted_as_the_line_decides():
    """Sure answers in another bin are told apart from moves across the reject threshold, and
    two classes sharing a bin are no change at all."""
    from edge.config import config_from_dict
    from train.evaluate import bin_changes

    config = config_from_dict({"decision": {"threshold": 0.6, "bins": {"paper": "fibre", "cardboard": "fibre"}}},
                              "bins.yaml")
    classes = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]

    def sure(i, margin=8.0):
        row = np.zeros(6, np.float32)
        row[i] = margin
        return row
    unsure = np.zeros(6, np.float32)  # 1/6 each: below the threshold
    reference = np.stack([sure(1), sure(1), sure(0), sure(2), unsure, sure(4)])
    other = np.stack([sure(1), sure(2), sure(3), unsure, sure(5), sure(4, 0.5)])
    assert bin_changes(config, classes, reference, other) == {"other_bin": 1, "to_reject": 2, "from_reject": 1}
    assert bin_changes(config, classes, reference, reference) == {"other_bin": 0, "to_reject": 0, "from_reject": 0}


def test_int8_saturation_rule():
    assert int8_kernels_saturate("x86_64", {"avx2", "fma"})  # e.g. AMD EPYC Zen 2/3, Intel before Cascade Lake
    assert not int8_kernels_saturate("x86_64", {"avx2", "avx512_vnni"})
    assert not int8_kernels_saturate("AMD64", {"avx2", "avx_vnni"})
    assert not int8_kernels_saturate("aarch64", set())  # Jetson's Arm cores: dot-product kernels


def _one_float_layer(run, form):
    """The tiny model in `form` with block 1's depthwise conv left in float: a layer whose input
    the layer before it quantizes."""
    from calibration.qdq import quantizable_nodes, quantize_int8
    from train.onnx_meta import stamp

    from calibration.calibrate import _ranges

    report = json.loads((run / "calibration_report.json").read_text())
    # the model the x86 form was made from (bias-corrected for its grid where that was chosen), whose ranges exist
    source = Path(report["int8_cpu"]["source"]) if form == "cpu" else run / "calibration" / "model_prepared.onnx"
    out = run / "calibration" / f"one-float-{form}.onnx"
    floating = quantizable_nodes(source)[4]
    ranges = _ranges(run / "calibration", "max", form, source)
    quantize_int8(source, out, None, "max", ranges, [floating], form=form)
    with open_backend(run / ("model_int8.onnx" if form == "tensorrt" else "model_int8_cpu.onnx")) as int8:
        stamp(out, int8.session.get_modelmeta().custom_metadata_map)
    graph = onnx.load(str(out)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == floating)
    assert producer[node.input[0]] == "DequantizeLinear" and producer.get(node.input[1]) is None  # float weights
    return out


def _plain_session(path, images, literal=True):
    """Logits from a bare ONNX Runtime session: with every optimisation off (the graph computed
    as written), or with ONNX Runtime's defaults."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if literal:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {session.get_inputs()[0].name: image})[0] for image in images])


def _through_backend(path, images):
    logits = []
    with open_backend(path) as backend:
        for image in images:
            backend.input[:] = image
            logits.append(backend.infer().copy())
    return np.stack(logits)


def test_a_layer_left_in_float_runs_in_float(calibrated, monkeypatch):
    """ONNX Runtime's WeightBiasQuantization pass would quantize a float convolution whose input
    comes from a DequantizeLinear, undoing what calibration left in float. TensorRT's form is
    computed as written, as TensorRT does: the same logits as with every ONNX Runtime
    optimisation off."""
    _, run = calibrated
    monkeypatch.setattr(ort_backend, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))  # the exact, unfused path
    path = _one_float_layer(run, "tensorrt")
    images = np.random.default_rng(0).uniform(-1, 1, (4, 1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(_through_backend(path, images), _plain_session(path, images), rtol=1e-4, atol=1e-4)


def test_calibration_measures_tensorrt_form_as_written_on_a_vnni_cpu(calibrated, trained_run, tmp_path, monkeypatch):
    """Where the CPU has VNNI the line runs TensorRT's form with ONNX Runtime's fused kernels,
    which quantize its float layers; calibration still measures what TensorRT computes: each
    variant scores as it does on a CPU where the graph runs as written."""
    _, run = calibrated
    monkeypatch.setattr(ort_backend, "_cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    _, vnni_run = calibrated_copy(trained_run, tmp_path, images=12, methods=["max", "entropy"], max_drop=-1.0,
                                  max_float_layers=2, sensitivity_images=6)
    scores = [{v["name"]: (v["agreement"], v["accuracy"], round(v["max_logit_diff"], 4)) for v in
               json.loads((r / "calibration_report.json").read_text())["variants"]} for r in (run, vnni_run)]
    assert any("-float-" in name for name in scores[0])
    assert scores[1] == scores[0]


def test_the_x86_form_keeps_its_float_layer_and_its_fused_kernels(calibrated):
    """The x86 form carries int32 biases, so ONNX Runtime runs it fused without the pass that
    would quantize its float layer: its logits stay closer to the graph as written than those
    of a session where the pass runs."""
    from edge.vision.backends.base import INT32_BIASES_KEY

    _, run = calibrated
    path = _one_float_layer(run, "cpu")
    model = onnx.load(str(path))
    assert {p.key: p.value for p in model.metadata_props}[INT32_BIASES_KEY] == "true"
    graph = model.graph
    int32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT32}
    assert int32 and any(n.op_type == "DequantizeLinear" and n.input[0] in int32 for n in graph.node)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 1, 3, 64, 64)).astype(np.float32)
    literal = _plain_session(path, images)
    ours = np.abs(_through_backend(path, images) - literal).mean()
    with_pass = np.abs(_plain_session(path, images, literal=False) - literal).mean()
    assert ours < with_pass / 2


@pytest.mark.parametrize("flags, unfused", [({"avx2", "fma"}, True), ({"avx2", "avx512_vnni"}, False)])
def test_tensorrt_form_runs_unfused_only_where_kernels_saturate(calibrated, monkeypatch, flags, unfused):
    """The CPU is described by its flags (the rule itself runs); the session really is opened
    without graph fusion where the fused INT8 kernels would saturate, and only there."""
    import onnxruntime as ort

    _, run = calibrated
    monkeypatch.setattr(ort_backend, "_cpu_flags", lambda: frozenset(flags))
    with open_backend(run / "model_int8.onnx") as int8, open_backend(run / "model_int8_cpu.onnx") as cpu:
        level = int8.session.get_session_options().graph_optimization_level
        assert (level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC) is unfused
        assert int8.unfused_int8 is unfused
        assert cpu.unfused_int8 is False  # the CPU form never needs it
        assert cpu.session.get_session_options().graph_optimization_level != ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_quantization_aware_variant_is_a_qdq_model_of_the_fine_tuned_weights(calibrated):
    _, run = calibrated
    report = json.loads((run / "calibration_report.json").read_text())
    qat = [v for v in report["variants"] if v["name"].startswith("qat-")]
    assert report["qat_model"] and {v["source"] for v in qat} == {str(run / "calibration" / "model_qat_prepared.onnx")}
    fine_tuned = onnx.load(report["qat_model"])
    original = onnx.load(str(run / "model.onnx"))
    assert {p.key: p.value for p in fine_tuned.metadata_props}["scrapsort.classes"] == \
        {p.key: p.value for p in original.metadata_props}["scrapsort.classes"]
    changed = [a.name for a, b in zip(original.graph.initializer, fine_tuned.graph.initializer)
               if not np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))]
    assert changed  # the weights moved
    ops = {n.op_type for n in onnx.load(qat[0]["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The legacy cache goes with model.onnx: it comes from a post-training variant of it.
    assert not report["trt_cache_from"].startswith("qat-")


def test_no_fine_tuning_for_a_model_that_is_not_the_runs_own(trained_run, tmp_path, capsys):
    """Quantization-aware fine-tuning starts from the run's best.pt: for another ONNX file
    it would quantize a different model's weights, so it is skipped with the reason."""
    import shutil

    from tests.conftest import write_config

    _, run = trained_run
    shutil.copytree(run, tmp_path / "out")
    other = tmp_path / "other.onnx"
    shutil.copyfile(run / "model.onnx", other)
    path = write_config(tmp_path / "c.yaml", run.parent / "data", tmp_path / "out",
                        calibration={"images": 12, "methods": ["max"], "max_drop": -1.0, "max_float_layers": 0})
    assert main(["calibrate", "--config", str(path), "--model", str(other)]) == 0
    assert "no quantization-aware fine-tuning" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "calibration_report.json").read_text())
    # bias correction needs no checkpoint: the given model is corrected too
    assert report["qat_model"] is None and [v["name"] for v in report["variants"]] == ["int8-max", "bc-int8-max"]
