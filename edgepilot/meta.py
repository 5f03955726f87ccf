"""`ModelMeta`: what a model file needs to carry so that the file alone is enough to run it.

It is written into every artifact (ONNX ``metadata_props``, TFLite metadata) and into every
checkpoint, and read back by `edgepilot.load`. The runtime's preprocessing is driven by it:

    image (H, W, 3) uint8 RGB -> resize to input_size -> colour order -> /255 -> (x - mean) / std
    -> layout (NCHW or NHWC) -> batch of one
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields

__all__ = ["ModelMeta", "META_KEY", "CHANNEL_SCALES"]

#: Key of the JSON blob in ONNX metadata_props (and in checkpoints).
META_KEY = "edgepilot"
#: `ModelMeta.extra` key of an int8 file whose layers' output channels were scaled before
#: quantization (`export.equalization`): {module name: [factor per channel]}, so `edgepilot
#: diff` compares those layers in the float model's units.
CHANNEL_SCALES = "channel_scales"

TASKS = ("classify", "detection")
LAYOUTS = ("NCHW", "NHWC", "NC")
COLORS = ("RGB", "BGR", "GRAY")
OUTPUTS = ("logits", "probs", "sigmoid")
#: How an input reaches the model: "resize" an image; "mnist" normalise a digit image as MNIST
#: did (grey, ink bright on dark, fitted in 20x20, centred by mass in 28x28); "none" raw values.
PREPROCESS = ("resize", "mnist", "none")

# Bounds on what a file may claim, so that a hostile or corrupt file cannot make the runtime
# allocate gigabytes: predict() resizes every image to input_size before the model sees it.
#: Largest input side (pixels, or features for "NC"): a 4096x4096x3 float32 input is 192 MiB.
MAX_INPUT_SIDE = 4096
#: Most labels, and the longest label (characters).
MAX_LABELS = 100_000
MAX_LABEL_LENGTH = 1_000
MAX_NAME_LENGTH = 1_000
#: Largest |mean| and smallest/largest std: pixels are 0..1, so anything beyond is not a
#: normalisation but a corrupt value (1e300 overflows float32 to inf).
MAX_NORM_VALUE = 1e6
MIN_STD = 1e-6
#: Longest metadata JSON accepted (characters); edgepilot writes a few hundred.
MAX_JSON_LENGTH = 4_000_000
#: Deepest nesting of lists and objects in `extra` (copying it recurses once per level).
MAX_EXTRA_DEPTH = 32


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
        task: what the outputs mean: ``"classify"``, or ``"detection"`` (then
            ``extra["decode"]`` says how to read the outputs; see runtime/detection.py).
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
        # Normalise lists from JSON into tuples so metas compare and hash alike. Types are
        # checked, not coerced: str() of a nested list or int() of 1e300 would hide corruption.
        object.__setattr__(self, "name", _text("name", self.name, MAX_NAME_LENGTH))
        object.__setattr__(self, "labels", tuple(
            _text("labels", _label(x), MAX_LABEL_LENGTH)
            for x in _sequence("labels", self.labels, MAX_LABELS)))
        object.__setattr__(self, "input_size", tuple(
            _integer("input_size", x) for x in _sequence("input_size", self.input_size, 2)))
        object.__setattr__(self, "mean", tuple(
            _number("mean", x) for x in _sequence("mean", self.mean, 3)))
        object.__setattr__(self, "std", tuple(
            _number("std", x) for x in _sequence("std", self.std, 3)))
        if not isinstance(self.extra, dict):
            raise ValueError(f"ModelMeta.extra must be an object, got {type(self.extra).__name__}")
        _check_depth(self.extra, MAX_EXTRA_DEPTH)
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
        if max(self.input_size) > MAX_INPUT_SIDE:
            raise ValueError(f"ModelMeta.input_size={self.input_size} is larger than "
                             f"{MAX_INPUT_SIDE} on a side")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("ModelMeta.mean and .std need one value per channel, std > 0")
        if len(self.mean) not in (1, self.channels):
            raise ValueError(f"ModelMeta.mean and .std have {len(self.mean)} values but color "
                             f"{self.color} has {self.channels} channel(s)")
        if any(abs(m) > MAX_NORM_VALUE for m in self.mean) or \
                any(not MIN_STD <= s <= MAX_NORM_VALUE for s in self.std):
            raise ValueError(f"ModelMeta.mean={self.mean} / std={self.std} are out of range: "
                             f"|mean| <= {MAX_NORM_VALUE:g}, {MIN_STD:g} <= std <= "
                             f"{MAX_NORM_VALUE:g} (pixels are scaled to 0..1)")

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
    def is_detector(self) -> bool:
        """Whether the outputs are boxes (``task="detection"``) rather than class scores."""
        return self.task == "detection"

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
        if not isinstance(data, dict):
            raise ValueError(f"metadata must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        # Unknown keys come from newer writers; keep them rather than fail.
        extra = {k: v for k, v in data.items() if k not in known}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {**kwargs.get("extra", {}), **extra}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMeta:
        """Parse metadata JSON; every defect is a ValueError (the loader names the file)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"metadata is not UTF-8 text ({err.reason})") from err
        if len(text) > MAX_JSON_LENGTH:
            raise ValueError(f"metadata JSON is {len(text):,} characters, more than "
                             f"{MAX_JSON_LENGTH:,}")
        try:
            data = json.loads(text)
        except RecursionError as err:  # json recurses once per nested [ or {
            raise ValueError("metadata JSON is nested too deeply") from err
        return cls.from_dict(data)


def _check_depth(value, limit: int) -> None:
    stack = [(value, 0)]
    while stack:  # a loop, not recursion: the point is to refuse what would overflow it
        item, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"ModelMeta.extra is nested more than {limit} levels deep")
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, (list, tuple)):
            stack += [(v, depth + 1) for v in item]


def _sequence(field_name: str, value, limit: int) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        raise ValueError(f"ModelMeta.{field_name} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"ModelMeta.{field_name} has {len(value):,} items, more than {limit:,}")
    return list(value)


def _label(value):
    """Whole-number labels (digit classes: range(10)) become their text; anything else is
    left for _text to accept or refuse."""
    is_whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return str(int(value)) if is_whole else value


def _text(field_name: str, value, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"ModelMeta.{field_name} must hold text, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"ModelMeta.{field_name} has a text of {len(value):,} characters, "
                         f"more than {limit:,}")
    return value


def _integer(field_name: str, value) -> int:
    # bool is an int subclass; a float such as 64.0 is fine, 64.5 or 1e300 is not.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or abs(value) > 2**31 or value != int(value):
        raise ValueError(f"ModelMeta.{field_name} must hold whole numbers below 2^31, "
                         f"got {value!r}"[:200])
    return int(value)


def _number(field_name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value):
        raise ValueError(f"ModelMeta.{field_name} must hold finite numbers, got {value!r}"[:200])
    return float(value)
