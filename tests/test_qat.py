"""Quantization-aware fine-tuning's parts: the simulated INT8 rounding, its removal, and that
the fine-tuning brings the simulated-INT8 model closer to FP32's answers."""
import re

import torch
from torch import nn

from calibration.qat import ChannelFakeQuant, InputFakeQuant, fake_quantize, input_ranges, plain


def test_weights_round_to_each_channels_own_symmetric_grid():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0]).view(4, 1, 1, 1)
    rounded = ChannelFakeQuant()(weight)
    for channel in range(4):
        scale = weight[channel].abs().max() / 127
        steps = rounded[channel] / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127 + 1e-3
        assert (rounded[channel] - weight[channel]).abs().max() <= scale / 2 + 1e-6  # nearest level
        assert rounded[channel].abs().max() == weight[channel].abs().max()  # the extreme is a level


def test_inputs_round_and_clip_to_their_range():
    hook = InputFakeQuant(amax=1.27)
    x = torch.tensor([-5.0, -0.0149, 0.016, 0.5, 5.0])
    (rounded,) = hook(None, (x,))
    assert torch.allclose(rounded, torch.tensor([-1.28, -0.01, 0.02, 0.5, 1.27]))


def test_simulation_comes_out_whole():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    batches = torch.randn(8, 3, 8, 8)
    before = model(batches).detach()
    ranges = input_ranges(model, batches, 99.9)
    assert set(ranges) == {"0", "3"} and all(v > 0 for v in ranges.values())
    hooks = fake_quantize(model, ranges)
    assert not torch.equal(model(batches), before)  # the rounding is in the forward pass
    model = plain(model, hooks)
    assert torch.equal(model(batches), before)
    state = model.state_dict()
    assert state.keys() == clean.keys() and all(torch.equal(state[k], clean[k]) for k in clean)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_fine_tuning_brings_simulated_int8_closer_to_fp32(trained_run, tmp_path, capsys):
    from calibration.qat import quantization_aware_finetune
    from edge.config import load_config
    from edge.vision.dataset import Manifest

    from tests.conftest import write_config

    _, run = trained_run
    still = {"hflip": 0, "vflip": 0, "rotation_deg": 0, "translate": 0, "scale": 0, "color_jitter": 0}
    config = load_config(write_config(tmp_path / "q.yaml", run.parent / "data", run,
                                      train={"augment": still},  # the same images each pass
                                      calibration={"qat": {"epochs": 12, "lr": 1e-5}}))
    manifest = Manifest.load(run / "manifest.json")
    files = [manifest.absolute(i) for i in manifest.split("train")]
    out = quantization_aware_finetune(config, run / "best.pt", manifest, files, tmp_path / "model_qat.onnx",
                                      {"scrapsort.classes": "[]"})
    divergences = [float(d) for d in re.findall(r"divergence from FP32 ([0-9.]+)", capsys.readouterr().out)]
    assert len(divergences) == 12 and out.is_file()
    assert divergences[-1] < 0.5 * divergences[0], divergences


def test_fine_tuning_also_learns_from_the_images_set_aside_for_it(trained_run, tmp_path, capsys, monkeypatch):
    """The calibration images give the simulated ranges; the set-aside selection images are
    learned from as well."""
    import calibration.qat as qat
    from edge.config import load_config
    from edge.vision.dataset import Manifest

    from tests.conftest import write_config

    _, run = trained_run
    config = load_config(write_config(tmp_path / "q.yaml", run.parent / "data", run, calibration={"qat": {"epochs": 1}}))
    manifest = Manifest.load(run / "manifest.json")
    train, val = manifest.split("train"), manifest.split("val")
    ranged, learned = [], []
    real_ranges, real_loader = qat.input_ranges, qat.make_loader
    monkeypatch.setattr(qat, "input_ranges", lambda model, batches, pct: ranged.append(len(batches)) or
                        real_ranges(model, batches, pct))
    monkeypatch.setattr(qat, "make_loader", lambda data, *a: learned.append(len(data)) or real_loader(data, *a))
    qat.quantization_aware_finetune(config, run / "best.pt", manifest, [manifest.absolute(i) for i in train[:4]],
                                    tmp_path / "model_qat.onnx", {}, also_learn=[manifest.absolute(i) for i in val])
    assert ranged == [4] and learned == [4 + len(val)]
    assert f"on {4 + len(val)} images (4 calibration, {len(val)} set aside" in capsys.readouterr().out

