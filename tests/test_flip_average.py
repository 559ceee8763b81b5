"""runtime.flip_average: each item classified as seen and mirrored, the logits averaged, on
every path that opens the line's model."""
import numpy as np

from edge.vision.backends import open_backend, open_side_instance
from edge.vision.preprocess import Preprocessor


def test_flip_average_is_the_mean_of_both_views_and_leaves_the_input(trained_run):
    _, run = trained_run
    with open_backend(run / "model.onnx") as plain, open_backend(run / "model.onnx", flip_average=True) as flipped:
        image = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        Preprocessor(plain.info.preprocess)(image, plain.input)
        seen = plain.infer().copy()
        mirrored_input = plain.input[..., ::-1].copy()
        plain.input[...] = mirrored_input
        mirrored = plain.infer().copy()
        Preprocessor(flipped.info.preprocess)(image, flipped.input)
        written = flipped.input.copy()
        averaged = flipped.infer().copy()
        assert np.allclose(averaged, (seen + mirrored) / 2, atol=1e-5)
        assert not np.allclose(seen, mirrored, atol=1e-4)  # the mirror really is another view here
        assert np.array_equal(flipped.input, written)
        assert np.allclose(flipped.infer(), averaged, atol=1e-6)  # the same again on the same input
        assert "flip-averaged" in flipped.name and flipped.info == plain.info


def test_the_line_and_its_side_instances_flip_when_configured(trained_run, tmp_path):
    from edge.config import load_config
    from edge.service.wiring import model_path, runtime_options
    from tests.conftest import line_config

    _, run = trained_run
    line_config(tmp_path, run, runtime={"flip_average": True})
    config = load_config(tmp_path / "line.yaml")
    path = model_path(config)
    with open_backend(path, **runtime_options(config, path)) as line, \
            open_side_instance(path, config.runtime.flip_average) as side:
        assert "flip-averaged" in line.name and "flip-averaged" in side.name
    with open_side_instance(path) as side:
        assert "flip-averaged" not in side.name
