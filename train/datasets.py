"""Datasets edgepilot makes offline, split reproducibly, at a model's input size.

    >>> images, labels = load_dataset("stoplight", "val", n=2000, size=(64, 64))

Stoplight splits come from the procedural generator with disjoint seeds:
``train`` and ``val`` use the training families of scenes; ``holdout`` renders only the
families kept out of training (`HOLDOUT`: a background kind, and three real photographs from
other packages than the training photographs), to measure generalisation beyond the
generator settings the model has seen.
"""

from __future__ import annotations

import numpy as np

from edgepilot.draw import stoplight
from edgepilot.errors import EdgepilotError, MissingDependencyError, did_you_mean
from edgepilot.runtime.image import resize

__all__ = ["load_dataset", "scene_config", "stoplight_split", "DATASETS", "HOLDOUT",
           "RENDER_SIZE"]

#: Scene families never rendered for training: the held-out test of generalisation.
HOLDOUT = {"backgrounds": ("buildings",), "photos": ("grace_hopper", "china", "flower"),
           "housings": (), "lamp_styles": ()}
#: The generator renders at this size; images are then resized exactly as the runtime resizes.
RENDER_SIZE = 96
# Seeds of the splits are far apart so no image index can repeat across splits.
_SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "holdout": 2_000_003}


def scene_config(split: str, **overrides) -> stoplight.SceneConfig:
    """The generator settings of a stoplight split (holdout: only the held-out families).

    A held-out image has a held-out background (a held-out photograph when it is a photo) and,
    when it shows a light, a held-out housing paint. `overrides` replace `SceneConfig` fields
    (training uses `light_size`, `glare` and `photo_share`); None leaves a field at its
    default."""
    everything = stoplight.SceneConfig()
    fields = {}
    for field, held in HOLDOUT.items():
        if held:
            kept = tuple(v for v in getattr(everything, field) if v not in held)
            fields[field] = held if split == "holdout" else kept
    if split == "holdout" and HOLDOUT["photos"]:
        fields["backgrounds"] += ("photo",)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return stoplight.SceneConfig(size=RENDER_SIZE, **fields)


def stoplight_split(split: str, n: int, size: tuple[int, int], seed: int = 0,
                    info: list | None = None, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """`n` stoplight images of a split at `size`, rendered and resized in chunks (the full-size
    renders of a large training set never sit in memory at once); `info` as in
    `stoplight.generate`, `overrides` as in `scene_config`."""
    seed, config = _SPLIT_SEEDS[split] + seed, scene_config(split, **overrides)
    images = np.empty((n, *size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    chunk = 2048
    for start in range(0, n, chunk):
        part, labels[start:start + chunk] = stoplight.generate(
            min(chunk, n - start), seed=seed, config=config, info=info, start=start)
        if part.shape[1:3] != tuple(size):
            part = np.stack([resize(img, size) for img in part])
        images[start:start + len(part)] = part
    return images, labels


def _stoplight(split: str, n: int, size: tuple[int, int], seed: int, **overrides):
    try:
        return stoplight_split(split, n, size, seed, **overrides)
    except ModuleNotFoundError as err:  # a photograph's package is missing: say which extra
        extras = {package: extra for package, _, extra in stoplight._PHOTO_FILES.values()}
        if err.name not in extras:
            raise
        raise MissingDependencyError(err.name, extras[err.name],
                                     "Stoplight photo backgrounds") from err


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
                 seed: int = 0, **options) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (n, H, W, 3) uint8 RGB and labels (n,) int64 of a dataset split (the
    neuron's dataset is its 8-row truth table, float features). `options` go to the dataset's
    maker (stoplight: `SceneConfig` fields such as `light_size`, `glare`)."""
    if name not in DATASETS:
        raise EdgepilotError(f"Unknown dataset '{name}'.{did_you_mean(name, DATASETS)} "
                             f"Known datasets: {', '.join(DATASETS)}")
    make, _, splits = DATASETS[name]
    if split not in splits:
        raise EdgepilotError(f"Dataset '{name}' has no split '{split}'. "
                             f"Splits: {', '.join(splits)}")
    if options and name != "stoplight":
        raise EdgepilotError(f"Dataset '{name}' takes no options, got {sorted(options)}")
    return make(split, n, size, seed, **options)


def validation_data(meta, n: int):
    """Validation data of the dataset a checkpoint's metadata names, when edgepilot can make
    it: (images, labels) for a classifier, street scenes with their boxes for a detector;
    None when it names none edgepilot can make, or `n` is 0. Export, deploy and bench's
    export matrix all take it from here."""
    dataset = meta.extra.get("dataset")
    if not dataset or not n:
        return None
    if meta.is_detector:
        from edgepilot.train.detector import validation_scenes

        return validation_scenes("val", n) if dataset == "streets" else None
    return load_dataset(dataset, "val", n, meta.input_size)
