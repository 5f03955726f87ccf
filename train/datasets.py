"""Datasets edgepilot makes offline, split reproducibly, at a model's input size.

    >>> images, labels = load_dataset("stoplight", "val", n=2000, size=(64, 64))

Stoplight splits come from the procedural generator with disjoint seeds:
``train`` and ``val`` use the training families of scenes; ``holdout`` renders only the
families kept out of training (`HOLDOUT`), to measure generalisation beyond the generator
settings the model has seen.
"""

from __future__ import annotations

import numpy as np

from edgepilot.errors import EdgepilotError, did_you_mean
from edgepilot.runtime.image import resize
from edgepilot.train import stoplight

__all__ = ["load_dataset", "scene_config", "DATASETS", "HOLDOUT", "RENDER_SIZE"]

#: Scene families never rendered for training: the held-out test of generalisation.
HOLDOUT = {"backgrounds": ("buildings",), "lamp_styles": ()}
#: The generator renders at this size; images are then resized exactly as the runtime resizes.
RENDER_SIZE = 96
# Seeds of the splits are far apart so no image index can repeat across splits.
_SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "holdout": 2_000_003}


def scene_config(split: str) -> stoplight.SceneConfig:
    """The generator settings of a stoplight split (holdout: only the held-out families)."""
    held = HOLDOUT["backgrounds"]
    if split == "holdout":
        return stoplight.SceneConfig(size=RENDER_SIZE, backgrounds=held)
    kept = tuple(b for b in stoplight.BACKGROUNDS if b not in held)
    return stoplight.SceneConfig(size=RENDER_SIZE, backgrounds=kept)


def _stoplight(split: str, n: int, size: tuple[int, int], seed: int):
    images, labels = stoplight.generate(n, seed=_SPLIT_SEEDS[split] + seed,
                                        config=scene_config(split))
    if images.shape[1:3] != tuple(size):
        images = np.stack([resize(img, size) for img in images])
    return images, labels


def _digits(split: str, n: int, size: tuple[int, int], seed: int):
    """Real digits as RGB images (what a camera gives the runtime); `n` from the start."""
    from edgepilot.train.digits import load_digits

    digits = load_digits(split)
    images = np.repeat(digits.images[:n, :, :, None], 3, axis=3)
    if images.shape[1:3] != tuple(size):
        images = np.stack([resize(img, size) for img in images])
    return images, digits.labels[:n]


def _neuron(split: str, n: int, size: tuple[int, int], seed: int):
    """The neuron's whole world: the 8 rows of the (green, yellow, red) truth table."""
    from edgepilot.train.classic import TRUTH_TABLE, rule

    return TRUTH_TABLE, rule(TRUTH_TABLE)


DATASETS = {
    "stoplight": (_stoplight, stoplight.LABELS, tuple(_SPLIT_SEEDS)),
    "digits": (_digits, tuple("0123456789"), ("train", "val", "test")),
    "neuron": (_neuron, ("stop", "go"), ("train", "val")),
}


def load_dataset(name: str, split: str, n: int, size: tuple[int, int],
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (n, H, W, 3) uint8 RGB and labels (n,) int64 of a dataset split (the
    neuron's dataset is its 8-row truth table, float features)."""
    if name not in DATASETS:
        raise EdgepilotError(f"Unknown dataset '{name}'.{did_you_mean(name, DATASETS)} "
                             f"Known datasets: {', '.join(DATASETS)}")
    make, _, splits = DATASETS[name]
    if split not in splits:
        raise EdgepilotError(f"Dataset '{name}' has no split '{split}'. "
                             f"Splits: {', '.join(splits)}")
    return make(split, n, size, seed)
