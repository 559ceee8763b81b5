"""Which normalisation the offline EfficientNet-Lite ImageNet weights expect, measured.

On 150 real TrashNet glass photos, each Lite variant's ImageNet head ranks a bottle class
(beer, wine, water, pop, pill bottle, whiskey jug) in its top 5 more often with TF-Lite's
(x - 127) / 128 than with torchvision's ImageNet mean/std: the default that
edge.vision.preprocess assigns to the efficientnet_lite backbones. (The head's entropy, which
ranks Lite0 the same way, is no guide for Lite1/Lite2: their ImageNet heads are flatter.)
"""
import numpy as np
import pytest

pytestmark = pytest.mark.dataset

BOTTLES = {440, 720, 737, 898, 901, 907}  # ImageNet class indices


@pytest.mark.parametrize("backbone, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                            ("efficientnet_lite2", 260)])
def test_tf_lite_normalisation_fits_pretrained_lite(trashnet, backbone, size):
    import torch

    from edge.config import ModelConfig
    from edge.vision.images import read_image
    from edge.vision.preprocess import BACKBONE_NORMALISATION, NORMALISATIONS, Preprocessor, PreprocessSpec
    from train.models import _efficientnet_lite, _imagenet_weights_file

    model = _efficientnet_lite(ModelConfig(backbone=backbone, input_size=size), 1000)
    model.load_state_dict(torch.load(_imagenet_weights_file(backbone), weights_only=True))  # with its ImageNet head
    model.eval()
    files = sorted((trashnet / "glass").glob("*.jpg"))[:150]
    bottle_in_top5 = {}
    for name in ("tf_lite", "imagenet"):
        pre = Preprocessor(PreprocessSpec(size, *NORMALISATIONS[name]))
        batch = np.stack([pre(read_image(f), pre.new_input()[0]) for f in files])
        with torch.no_grad():
            top5 = model(torch.from_numpy(batch)).topk(5, dim=1).indices.tolist()
        bottle_in_top5[name] = np.mean([bool(BOTTLES & set(row)) for row in top5])
    assert bottle_in_top5["tf_lite"] > bottle_in_top5["imagenet"] + 0.03, bottle_in_top5
    assert BACKBONE_NORMALISATION[backbone] == "tf_lite"
