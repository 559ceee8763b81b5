import cv2
import numpy as np
import pytest

from edge.errors import ImageError
from edge.vision.images import decode_image, read_image, to_bgr8
from edge.vision.preprocess import Preprocessor, PreprocessSpec


def jpeg(image) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_truncated_jpeg_is_rejected_with_reason():
    data = jpeg(np.full((64, 64, 3), 128, np.uint8))
    assert decode_image(data).shape == (64, 64, 3)
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2], "half.jpg")


def test_garbage_empty_and_missing(tmp_path):
    with pytest.raises(ImageError, match="not a decodable image"):
        decode_image(b"this is not an image", "notes.txt")
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"", "empty.jpg")
    with pytest.raises(ImageError, match="cannot read"):
        read_image(tmp_path / "missing.jpg")


@pytest.mark.parametrize("image", [
    np.full((20, 30), 200, np.uint8),                 # grayscale
    np.full((20, 30, 4), 200, np.uint8),              # BGRA
    np.full((20, 30, 3), 200 * 257, np.uint16),       # 16-bit
])
def test_odd_formats_become_bgr8(image):
    out = to_bgr8(image)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert int(out[0, 0, 0]) == 200


def test_wrong_shapes_rejected():
    with pytest.raises(ImageError, match="too small"):
        to_bgr8(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="channel"):
        to_bgr8(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(ImageError, match="expected an HxW"):
        to_bgr8(np.zeros((2, 20, 20, 3), np.uint8))


def test_preprocess_writes_in_place_and_matches_formula():
    spec = PreprocessSpec.for_backbone("efficientnet_lite0", 32)
    pre = Preprocessor(spec)
    bgr = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = pre.new_input()
    result = pre(bgr, buffer)
    assert np.shares_memory(result, buffer)
    rgb = cv2.cvtColor(cv2.resize(bgr, (32, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    expected = (rgb.transpose(2, 0, 1).astype(np.float32) - 127.0) / 128.0
    np.testing.assert_allclose(buffer[0], expected, atol=1e-6)


def test_imagenet_normalisation_for_resnet():
    spec = PreprocessSpec.for_backbone("resnet18", 32)
    assert spec.mean == (123.675, 116.28, 103.53)
    assert PreprocessSpec.from_json(spec.to_json()) == spec
