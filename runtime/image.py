"""Images in, model input out: reading files and the preprocessing a `ModelMeta` describes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgepilot.errors import InputError
from edgepilot.meta import ModelMeta

__all__ = ["read_image", "check_image", "resize", "mnist_style", "preprocess"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Raises:
        InputError: the file is missing or is not an image OpenCV can decode.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Image file not found: '{path}'")
    # imdecode from bytes handles non-ASCII paths, which cv2.imread does not on every platform.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(
            f"Cannot decode '{path}' as an image ({data.size} bytes). "
            f"Use an image file such as {', '.join(IMAGE_SUFFIXES[:4])}"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # (H, W, 3) uint8 RGB


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB image array and return it as (H, W, 3) uint8.

    A (H, W) or (H, W, 1) grey image is accepted and repeated to three channels.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"Expected an image as a numpy array or a file path, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        hint = (
            " If it holds 0..1 floats, pass (image * 255).round().astype(np.uint8)."
            if np.issubdtype(image.dtype, np.floating)
            else " Convert it with image.astype(np.uint8) if its values are 0..255."
        )
        raise InputError(
            f"Expected a uint8 image with values 0..255, got dtype {image.dtype}.{hint}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(
            f"Expected an image of shape (H, W, 3) RGB, got shape {image.shape}. "
            "Pass one image at a time, channels last."
        )
    if image.shape[2] == 4:
        raise InputError(
            "Got a 4-channel (RGBA) image; the model takes RGB. Drop alpha with image[..., :3]."
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"Image of shape {image.shape} is too small to resize")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) to `size` = (height, width), the runtime's way (training uses it too)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    # INTER_AREA averages when shrinking (no aliasing); linear is the better choice to enlarge.
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def mnist_style(image: np.ndarray) -> np.ndarray:
    """A digit photo or scan -> (28, 28, 1) uint8 the way MNIST was made: grey, bright ink on
    black (inverted when the paper is lighter than the ink), the ink's bounding box fitted into
    20x20 keeping its aspect, centred by centre of mass in 28x28."""
    grey = cv2.cvtColor(check_image(image), cv2.COLOR_RGB2GRAY)
    if np.median(grey) > 127:  # dark ink on light paper
        grey = 255 - grey
    grey = np.where(grey >= max(40, 0.3 * int(grey.max())), grey, 0).astype(np.uint8)
    ys, xs = np.nonzero(grey)
    out = np.zeros((28, 28), np.uint8)
    if not len(ys):
        return out[:, :, None]
    crop = grey[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    scale = 20 / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    digit = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else
                       cv2.INTER_LINEAR)
    mass = digit.astype(np.float64)
    total = mass.sum() or 1.0
    cy = (mass.sum(1) * np.arange(h)).sum() / total
    cx = (mass.sum(0) * np.arange(w)).sum() / total
    top = int(np.clip(round(14 - cy), 0, 28 - h))
    left = int(np.clip(round(14 - cx), 0, 28 - w))
    out[top:top + h, left:left + w] = digit
    return out[:, :, None]


def preprocess(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> float32 model input of batch one, as `meta` describes."""
    if not meta.is_image:
        raise InputError(f"{meta.name} takes a feature vector, not an image: use "
                         "Model.predict_inputs(values)")
    if meta.preprocess == "mnist":
        image = mnist_style(image)  # (28, 28, 1), already grey
        if meta.input_size != (28, 28):
            image = resize(image, meta.input_size)[:, :, None]
        return _normalise(image, meta)
    image = resize(check_image(image), meta.input_size)
    if meta.color == "BGR":
        image = image[:, :, ::-1]
    elif meta.color == "GRAY":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    return _normalise(image, meta)


def _normalise(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(h, w, c) uint8 -> (1, ...) float32 in the layout of `meta`."""
    x = image.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)  # (h, w, c)
    if meta.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    elif meta.layout == "NC":
        x = x.reshape(-1)
    return np.ascontiguousarray(x[None])  # (1, ...) float32
