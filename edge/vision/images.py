"""Image decoding that refuses what would silently mislead the model.

OpenCV decodes a truncated JPEG into a half-grey picture with only a warning on stderr;
here it is an ImageError naming the file and the reason. Grayscale, alpha and 16-bit
images are converted to 8-bit BGR so every later stage sees one format.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import PIL.Image
import simplejpeg

from edge.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND"
_MIN_SIDE = 8


def check_complete(data: bytes, name: str) -> None:
    """Raise ImageError when a PNG stream is empty or cut short (JPEGs: see _decode_jpeg)."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if data.startswith(_PNG_SIGNATURE) and _PNG_IEND not in data[-16:]:
        raise ImageError(f"{name}: truncated PNG (no IEND chunk)")


def _decode_jpeg(data: bytes, name: str) -> Optional[np.ndarray]:
    """Decode a JPEG completely with libjpeg-turbo in strict mode, which reports what OpenCV only
    warns about: a scan that ends early, even with an end marker appended. Trailing bytes after
    a complete image are fine. None when this decoder does not support the file's kind."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError as exc:
        reason = str(exc)
        if "unsupported" in reason.lower():
            return None  # valid, but not for this decoder: OpenCV's turn
        if "premature end" in reason.lower():
            raise ImageError(f"{name}: truncated JPEG ({reason})") from None
        if "corrupt jpeg data" in reason.lower():
            raise ImageError(f"{name}: corrupt JPEG ({reason})") from None
        raise ImageError(f"{name}: truncated JPEG or broken header ({reason})") from None


def check_pixels(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse an image whose header announces more than max_pixels, before decoding it: a small
    compressed file can unpack to gigabytes (a decompression bomb)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)  # the check below decides
            with PIL.Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
    except PIL.Image.DecompressionBombError:
        raise ImageError(f"{name}: more than {max_pixels / 1e6:.0f} megapixels") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} is more than {max_pixels / 1e6:.0f} megapixels")


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: Optional[int] = None) -> np.ndarray:
    """Encoded bytes -> BGR uint8 HxWx3, or ImageError with the reason. With max_pixels (for
    untrusted uploads), the size is checked from the header before anything is decoded."""
    check_complete(data, name)
    if max_pixels is not None:
        check_pixels(data, name, max_pixels)
    image = _decode_jpeg(data, name) if data.startswith(_JPEG_SOI) else None
    if image is not None:
        return to_bgr8(image, name)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: not a decodable image")
    return to_bgr8(image, name)


def read_image(path: Union[str, Path]) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_image(data, str(path))


def to_bgr8(image: np.ndarray, name: str = "frame") -> np.ndarray:
    """Any 2-D/3-D OpenCV image -> contiguous BGR uint8, or ImageError if unusable."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ImageError(f"{name}: expected an HxW or HxWxC image, got shape {getattr(image, 'shape', None)}")
    if min(image.shape[:2]) < _MIN_SIDE:
        raise ImageError(f"{name}: image too small ({image.shape[1]}x{image.shape[0]})")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif channels != 3:
        raise ImageError(f"{name}: unsupported channel count {channels}")
    return np.ascontiguousarray(image)
