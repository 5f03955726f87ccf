"""`ModelMeta`: what a model file needs to carry so that the file alone is enough to run it.

It is written into every artifact (ONNX ``metadata_props``, TFLite metadata) and into every
checkpoint, and read back by `edgepilot.load`. The runtime's preprocessing is driven by it:

    image (H, W, 3) uint8 RGB -> resize to input_size -> colour order -> /255 -> (x - mean) / std
    -> layout (NCHW or NHWC) -> batch of one
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

__all__ = ["ModelMeta", "META_KEY"]

#: Key of the JSON blob in ONNX metadata_props (and in checkpoints).
META_KEY = "edgepilot"

TASKS = ("classify",)
LAYOUTS = ("NCHW", "NHWC", "NC")
COLORS = ("RGB", "BGR", "GRAY")
OUTPUTS = ("logits", "probs", "sigmoid")
#: How an input reaches the model: "resize" an image; "mnist" normalise a digit image as MNIST
#: did (grey, ink bright on dark, fitted in 20x20, centred by mass in 28x28); "none" raw values.
PREPROCESS = ("resize", "mnist", "none")


@dataclass(frozen=True)
class ModelMeta:
    """Labels and preprocessing of a model.

    Args:
        name: a short model name, e.g. ``"stoplight"``.
        labels: class names in output order.
        input_size: (height, width) of the image the model takes.
        layout: ``"NCHW"`` (PyTorch), ``"NHWC"`` (TFLite) or ``"NC"`` (a flat vector).
        color: channel order the model expects: ``"RGB"``, ``"BGR"`` or ``"GRAY"``.
        mean: per-channel mean subtracted after scaling pixels to 0..1.
        std: per-channel standard deviation divided after the mean.
        output: ``"logits"`` (softmax applied by the runtime), ``"probs"``, or ``"sigmoid"``
            (one probability of the second label, e.g. the "go" of a single neuron).
        task: what the outputs mean; ``"classify"`` for now.
        preprocess: ``"resize"`` (images), ``"mnist"`` (digit images) or ``"none"`` (a raw
            feature vector; then input_size is (1, features) and layout ``"NC"``).

    Example:
        >>> meta = ModelMeta(name="stoplight", labels=("red", "green"), input_size=(64, 64))
        >>> ModelMeta.from_json(meta.to_json()) == meta
        True
    """

    name: str
    labels: tuple[str, ...]
    input_size: tuple[int, int]
    layout: str = "NCHW"
    color: str = "RGB"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    output: str = "logits"
    task: str = "classify"
    preprocess: str = "resize"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Normalise lists from JSON into tuples so metas compare and hash alike.
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "input_size", tuple(int(x) for x in self.input_size))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        for name, value, valid in (
            ("layout", self.layout, LAYOUTS),
            ("color", self.color, COLORS),
            ("output", self.output, OUTPUTS),
            ("task", self.task, TASKS),
            ("preprocess", self.preprocess, PREPROCESS),
        ):
            if value not in valid:
                raise ValueError(f"ModelMeta.{name}={value!r} is not one of {', '.join(valid)}")
        if not self.labels:
            raise ValueError("ModelMeta.labels is empty: a classifier needs at least one label")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"ModelMeta.input_size={self.input_size} must be (height, width) > 0")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("ModelMeta.mean and .std need one value per channel, std > 0")

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input with batch 1, in this layout (e.g. (1, 3, 64, 64))."""
        height, width = self.input_size
        if self.layout == "NCHW":
            return (1, self.channels, height, width)
        if self.layout == "NHWC":
            return (1, height, width, self.channels)
        return (1, self.channels * height * width)

    @property
    def is_image(self) -> bool:
        """False for models fed raw feature vectors (``preprocess="none"``)."""
        return self.preprocess != "none"

    def replace(self, **changes) -> ModelMeta:
        """A copy with some fields changed (e.g. ``layout="NHWC"`` for a TFLite file)."""
        return ModelMeta(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelMeta:
        known = {f.name for f in fields(cls)}
        # Unknown keys come from newer writers; keep them rather than fail.
        extra = {k: v for k, v in data.items() if k not in known}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {**kwargs.get("extra", {}), **extra}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        return cls.from_dict(json.loads(text))
