"""The stronger-recipe parts: layer-wise rate decay, mixup/cutmix with their loss, augmentation
policies, distillation from a teacher, and a training run that uses them all."""
import json

import pytest
import torch

from edge.config import DistillConfig, MixConfig, ModelConfig
from edge.errors import ModelError


def test_layer_decay_slows_each_stage_below_the_top():
    from train.models import build_model, freeze_stages, head, stages
    from train.recipe import param_groups

    model = build_model(ModelConfig(input_size=64), 6, load_weights=False)
    freeze_stages(model, "efficientnet_lite0", 3)
    groups = param_groups(model, "efficientnet_lite0", 1e-3, backbone_scale=0.5, layer_decay=0.5)
    rates = [g["lr"] for g in groups]
    # head, the 1x1 head convolution, then the 5 trainable stages from the top down
    assert rates == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5, 3.125e-5, 1.5625e-5])
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in head(model, "efficientnet_lite0").parameters()}
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in stages(model, "efficientnet_lite0")[-1].parameters()}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once, none frozen


def test_layer_decay_on_resnet_starts_at_the_last_stage():
    from train.models import build_model, stages
    from train.recipe import param_groups

    model = build_model(ModelConfig(backbone="resnet18", weights="none", input_size=64), 6, load_weights=False)
    groups = param_groups(model, "resnet18", 1e-2, layer_decay=0.1)
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in stages(model, "resnet18")[-1].parameters()}


def test_mixup_blends_images_and_labels_in_one_proportion():
    from train.recipe import Mixer

    torch.manual_seed(0)
    inputs, labels = torch.randn(8, 3, 16, 16), torch.arange(8)
    mixed, mix = Mixer(MixConfig(mixup_alpha=0.4))(inputs, labels)
    order = mix.labels  # labels are 0..7, so the second labels are the pairing
    assert 0 < mix.weight < 1 and not torch.equal(order, labels)
    assert torch.allclose(mixed, mix.weight * inputs + (1 - mix.weight) * inputs[order], atol=1e-6)


def test_cutmix_weight_is_the_area_kept():
    from train.recipe import Mixer

    torch.manual_seed(1)
    inputs, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    for _ in range(5):
        mixed, mix = Mixer(MixConfig(cutmix_alpha=1.0))(inputs, labels)
        kept = (mixed == inputs).all(dim=1)  # pixels still from the image itself
        pasted = (mixed == inputs[mix.labels]).all(dim=1) & ~kept
        assert kept.float().mean(dim=(1, 2)).min() >= mix.weight - 1e-6
        assert pasted.float().mean(dim=(1, 2)).max() == pytest.approx(1 - mix.weight)


def test_mixer_off_and_prob_zero_leave_the_batch():
    from train.recipe import Mixer

    inputs, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    for cfg in (MixConfig(), MixConfig(mixup_alpha=1.0, prob=0.0)):
        out, mix = Mixer(cfg)(inputs, labels)
        assert out is inputs and mix is None


def test_mixed_loss_weighs_both_labels_with_their_class_weights():
    from train.distributed import GlobalBatchLoss, Group
    from train.recipe import Mix

    class_weight = torch.tensor([1.0, 3.0, 0.5])
    loss = GlobalBatchLoss(class_weight, 0.0, Group())
    logits, a, b = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 2, 0, 0, 2])
    losses, weights = loss.items(logits, a, Mix(b, 0.3))
    ce = torch.nn.functional.cross_entropy
    expected = 0.3 * ce(logits, a, weight=class_weight, reduction="none") + \
        0.7 * ce(logits, b, weight=class_weight, reduction="none")
    assert torch.allclose(losses, expected)
    assert torch.allclose(weights, 0.3 * class_weight[a] + 0.7 * class_weight[b])
    plain = loss.items(logits, a)
    assert torch.allclose(loss.items(logits, a, Mix(b, 1.0))[0], plain[0])


def test_augment_policies_keep_size_and_type_and_change_the_image():
    from edge.config import AugmentConfig
    from train.data import Augment

    torch.manual_seed(0)
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    still = dict(hflip=0, vflip=0, rotation_deg=0, translate=0, scale=0, color_jitter=0)
    assert torch.equal(Augment(AugmentConfig(**still), 64)(image), image)
    for policy in ("trivial", "randaugment"):
        augment = Augment(AugmentConfig(**still, policy=policy), 64)
        outputs = [augment(image) for _ in range(8)]
        assert all(o.dtype == torch.uint8 and o.shape == image.shape for o in outputs)
        assert sum(not torch.equal(o, image) for o in outputs) >= 4, policy


def test_teacher_refuses_other_classes_and_normalisation(trained_run, tmp_path):
    from edge.vision.preprocess import PreprocessSpec
    from train.recipe import Teacher

    _, run = trained_run
    classes = json.loads((run / "manifest.json").read_text())["classes"]
    spec = PreprocessSpec.for_backbone("efficientnet_lite0", 64)
    with pytest.raises(ModelError, match="same classes"):
        Teacher(DistillConfig(teacher=str(run)), spec, classes[::-1], torch.device("cpu"))
    with pytest.raises(ModelError, match="same family"):
        Teacher(DistillConfig(teacher=str(run)), PreprocessSpec.for_backbone("resnet18", 64), classes,
                torch.device("cpu"))


def test_distillation_term_is_zero_when_student_matches_teacher(trained_run):
    from edge.vision.preprocess import PreprocessSpec
    from train.recipe import Teacher

    _, run = trained_run
    classes = json.loads((run / "manifest.json").read_text())["classes"]
    teacher = Teacher(DistillConfig(teacher=str(run), weight=1.0, temperature=3.0),
                      PreprocessSpec.for_backbone("efficientnet_lite0", 64), classes, torch.device("cpu"))
    inputs = torch.randn(4, 3, 48, 48)  # another size: the teacher sees it at its own
    resized = torch.nn.functional.interpolate(inputs, size=(64, 64), mode="bilinear", antialias=True)
    with torch.no_grad():
        same = teacher.model(resized)
    ones = torch.ones(4)
    assert teacher.blend(torch.full((4,), 7.0), ones, same, inputs).abs().max() < 1e-5
    assert teacher.blend(torch.zeros(4), ones, -same, inputs).min() > 0.01  # a different answer costs


def test_training_with_every_recipe_part(trained_run, tmp_path, capsys):
    from edge.cli import main
    from tests.conftest import write_config

    config_path, run = trained_run
    data = run.parent / "data"
    out = tmp_path / "out"
    config = write_config(tmp_path / "r.yaml", data, out, train={
        "epochs": 2, "schedule": "cosine", "warmup_epochs": 1, "layer_decay": 0.7, "ema_decay": 0.9,
        "augment": {"policy": "trivial"}, "mix": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0},
        "distill": {"teacher": str(run), "weight": 0.5}})
    for command in (["prepare"], ["train"], ["export"]):
        assert main(command + ["--config", str(config), "-q"]) == 0, command
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["train_loss"] == h["train_loss"] for h in history)  # not NaN
    assert (out / "model.onnx").is_file()
    assert f"distilling from efficientnet_lite0 from {run / 'best.pt'}" in capsys.readouterr().out
