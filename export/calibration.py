"""Calibration images for int8: a folder of images or an .npy array, at the model's input size.

Images that fail to decode are skipped and counted, not fatal; a source with no usable image is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepilot.errors import EdgepilotError, InputError
from edgepilot.meta import ModelMeta
from edgepilot.runtime.image import IMAGE_SUFFIXES, check_image, preprocess, read_image, resize

__all__ = ["Calibration", "load_calibration", "as_inputs"]


@dataclass
class Calibration:
    """(N, H, W, 3) uint8 RGB images, where they came from, and how many were skipped."""

    images: np.ndarray
    source: str
    skipped: int = 0


def as_inputs(samples: np.ndarray, meta: ModelMeta) -> list[np.ndarray]:
    """Model inputs of batch one, exactly as the runtime makes them: images are preprocessed
    as `meta` says; feature vectors (``preprocess="none"``) go in as they are."""
    if not meta.is_image:
        return [np.asarray(s, np.float32).reshape(1, -1) for s in samples]
    return [preprocess(image, meta) for image in samples]


def load_calibration(source: str | Path | np.ndarray, size: tuple[int, int],
                     limit: int = 300, meta: ModelMeta | None = None) -> Calibration:
    """Up to `limit` images from a folder (recursively), an .npy file or an array.

    For models fed feature vectors, `source` is an (N, features) array used as it is."""
    if meta is not None and not meta.is_image:
        array = np.load(source) if isinstance(source, (str, Path)) else np.asarray(source)
        if array.ndim != 2 or not len(array):
            raise EdgepilotError(f"Calibration for {meta.name} takes an (N, features) array, "
                                 f"got shape {array.shape}")
        return Calibration(array[:limit].astype(np.float32), "array")
    if isinstance(source, np.ndarray):
        return Calibration(_from_array(source, size, limit, "array"), "array")
    path = Path(source)
    if not path.exists():
        raise EdgepilotError(f"Calibration source not found: '{path}'")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise EdgepilotError(f"Cannot read '{path}' as a numpy array: {err}") from err
        return Calibration(_from_array(array, size, limit, str(path)), str(path))
    if not path.is_dir():
        raise EdgepilotError(f"calib= takes a folder of images or an .npy file, got '{path}'")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images, skipped = [], 0
    for file in files:
        if len(images) >= limit:
            break
        try:
            images.append(resize(read_image(file), size))
        except InputError:
            skipped += 1
    if not images:
        found = f"{len(files)} image file(s), none decodable" if files else "no image files"
        raise EdgepilotError(f"Calibration folder '{path}' has {found} "
                             f"(looked for {', '.join(IMAGE_SUFFIXES)}).")
    return Calibration(np.stack(images), str(path), skipped)


def _from_array(array: np.ndarray, size: tuple[int, int], limit: int, name: str) -> np.ndarray:
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.dtype != np.uint8:
        raise EdgepilotError(f"Calibration array {name} must be (N, H, W, 3) uint8 RGB, got "
                             f"{array.shape} {array.dtype}")
    if not len(array):
        raise EdgepilotError(f"Calibration array {name} is empty")
    return np.stack([resize(check_image(img), size) for img in array[:limit]])
